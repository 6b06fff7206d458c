"""The inventory: nodes announce themselves, users see the nodes their roles reach."""

from __future__ import annotations

from datetime import timedelta

from certgate.access.rbac import RoleSet
from certgate.api.identity import SYSTEM_NODE, Identity
from certgate.api.node import Node
from certgate.auth.core import AuthCore
from certgate.errors import AccessDenied, NotFound


class Inventory(AuthCore):
    # inventory ----------------------------------------------------------------------

    async def heartbeat(self, caller: Identity, node: Node, ttl: timedelta) -> None:
        """A node announces itself; it disappears when it stops (the item expires)."""
        if not caller.is_service(SYSTEM_NODE):
            raise AccessDenied(f"access denied: {caller.username} is not a node")
        if node.name != caller.username:
            raise AccessDenied(
                f'access denied: node "{caller.username}" cannot announce "{node.name}"'
            )
        if node.spec.sub_kind:
            raise AccessDenied("access denied: a node cannot announce itself as agentless")
        holder = await self.host_names.get("node", node.name)
        if holder is None or caller.issued is None or holder.issued != caller.issued:
            # Removed (`cgctl rm node/NAME`), and maybe joined again by another host.
            raise AccessDenied(
                f'access denied: this identity no longer holds the name "{node.name}": '
                "join the cluster again with a new token"
            )
        meta = node.metadata.model_copy(update={"expires": self.clock.now() + ttl})
        await self.nodes.upsert(node.model_copy(update={"metadata": meta}))

    async def nodes_for(self, caller: Identity) -> list[Node]:
        """The nodes the caller's roles give access to (what `cgsh ls` shows)."""
        roles = await self.load_roles(list(caller.roles))
        role_set = RoleSet(roles, caller.traits)
        nodes = await self.nodes.list()
        return [n for n in nodes if role_set.can_access_node(n.metadata.labels)]

    async def is_agentless(self, node: str) -> bool:
        """Whether `node` is an agentless OpenSSH node (its sessions are the proxy's)."""
        try:
            found = await self.nodes.get(node)
        except NotFound:
            return False
        return found.spec.sub_kind == "openssh"
