"""The inventory: nodes announce themselves, users see the nodes their roles reach."""

from __future__ import annotations

from datetime import timedelta

from certgate.access.rbac import RoleSet
from certgate.access.requests import resource_allowed
from certgate.api.identity import SYSTEM_NODE, Identity
from certgate.api.kube_cluster import KubeCluster
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
        holder = await self.host_names.holder("node", node.name)
        if holder is None or caller.issued is None or holder.issued != caller.issued:
            # Removed (`cgctl rm node/NAME`), and maybe joined again by another host.
            raise AccessDenied(
                f'access denied: this identity no longer holds the name "{node.name}": '
                "join the cluster again with a new token"
            )
        # Revision 0 as stored: encode then copies nothing more (two model copies a
        # beat fewer, 333 beats a second at 10,000 nodes).
        meta = node.metadata.model_copy(update={"expires": self.clock.now() + ttl, "revision": 0})
        # Coalesced with the other nodes' beats into one transaction (batched_writer.py).
        await self.node_writer.put(self.nodes.encode(node.model_copy(update={"metadata": meta})))

    async def kube_heartbeat(self, caller: Identity, cluster: KubeCluster, ttl: timedelta) -> None:
        """A kube service announces a cluster it forwards to (it names itself as service)."""
        spec = cluster.spec.model_copy(update={"service": caller.username})
        meta = cluster.metadata.model_copy(update={"expires": self.clock.now() + ttl})
        await self.kube_clusters.upsert(cluster.model_copy(update={"metadata": meta, "spec": spec}))

    async def serves_kube_cluster(self, service: str, cluster: str) -> bool:
        """Whether kube service `service` announced `cluster` (it records its sessions)."""
        try:
            found = await self.kube_clusters.get(cluster)
        except NotFound:
            return False
        return found.spec.service == service

    async def kube_clusters_for(self, caller: Identity) -> list[KubeCluster]:
        """The clusters the caller's roles (and resource grants) reach: `cgsh kube ls`."""
        roles = await self.load_roles(list(caller.roles))
        role_set = RoleSet(roles, caller.traits)
        clusters = await self.kube_clusters.list()
        return [
            c
            for c in clusters
            if role_set.can_access_kube(c.metadata.labels)
            and resource_allowed(caller.resources, "kube_cluster", c.name)
        ]

    async def nodes_for(self, caller: Identity) -> list[Node]:
        """The nodes the caller's roles give access to (what `cgsh ls` shows)."""
        roles = await self.load_roles(list(caller.roles))
        role_set = RoleSet(roles, caller.traits)
        if self.node_mirror.current:  # 10,000 nodes: no store read per call
            nodes = [self.nodes.decode(item) for item in self.node_mirror.items()]
        else:
            nodes = await self.nodes.list()
        # Whether the roles reach a node depends on its labels alone, and nodes share
        # label sets: each set is judged once per call (the judging was half of a
        # `cgsh ls` at 10,000 nodes on auth's core).
        reaches: dict[tuple[tuple[str, str], ...], bool] = {}
        visible = []
        for n in nodes:
            labels = n.metadata.labels
            key = tuple(labels.items())
            reached = reaches.get(key)
            if reached is None:
                reached = reaches[key] = role_set.can_access_node(labels)
            if reached and resource_allowed(caller.resources, "node", n.name):
                visible.append(n)
        return visible

    async def is_agentless(self, node: str) -> bool:
        """Whether `node` is an agentless OpenSSH node (its sessions are the proxy's)."""
        try:
            found = await self.nodes.get(node)
        except NotFound:
            return False
        return found.spec.sub_kind == "openssh"
