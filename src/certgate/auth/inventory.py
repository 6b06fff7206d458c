"""The inventory: nodes announce themselves, users see the nodes their roles reach."""

from __future__ import annotations

import uuid
from datetime import timedelta

from certgate.access.rbac import RoleSet
from certgate.access.requests import resource_allowed
from certgate.api.identity import SYSTEM_NODE, Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.node import Node
from certgate.auth.host_name_rules import HostNameRules
from certgate.errors import AccessDenied, AlreadyExists, NotFound

# Names whose announced hostname (or refused beat) this process remembers checking
# (above the 10,000 nodes one auth is sized for).
HOSTNAMES_CHECKED = 32_768


class Inventory(HostNameRules):
    # inventory ----------------------------------------------------------------------

    async def heartbeat(self, caller: Identity, node: Node, ttl: timedelta) -> None:
        """A node announces itself; it disappears when it stops (the item expires)."""
        try:
            await self._check_heartbeat(caller, node)
        except AccessDenied as exc:
            await self._audit_refused_beat(
                caller,
                exc,
                node=node.name,
                hostname=node.spec.hostname or None,
                addr=node.spec.addr,
            )
            raise
        # Revision 0 as stored: encode then copies nothing more (two model copies a
        # beat fewer, 333 beats a second at 10,000 nodes).
        meta = node.metadata.model_copy(update={"expires": self.clock.now() + ttl, "revision": 0})
        # Coalesced with the other nodes' beats into one transaction (batched_writer.py).
        await self.node_writer.put(self.nodes.encode(node.model_copy(update={"metadata": meta})))

    async def _check_heartbeat(self, caller: Identity, node: Node) -> None:
        if not caller.is_service(SYSTEM_NODE):
            raise AccessDenied(f"access denied: {caller.username} is not a node")
        if node.name != caller.username:
            raise AccessDenied(
                f'access denied: node "{caller.username}" cannot announce "{node.name}"'
            )
        if node.spec.sub_kind:
            raise AccessDenied("access denied: a node cannot announce itself as agentless")
        holder = await self.host_names.holder("node", node.name)
        agentless = holder is not None and holder.agentless
        if agentless or self.node_aliases.is_agentless(node.name):
            # An admin's record: a beat must never replace it (nor one an identity that
            # joined the name before it was registered sends).
            raise AccessDenied(
                f'access denied: "{node.name}" is an agentless node an admin registered; '
                "a node cannot announce it"
            )
        if holder is None or caller.issued is None or holder.issued != caller.issued:
            # Removed (`cgctl rm node/NAME`), and maybe joined again by another host.
            raise AccessDenied(
                f'access denied: this identity no longer holds the name "{node.name}": '
                "join the cluster again with a new token"
            )
        # A node announces the same hostname beat after beat: it is checked when it
        # first comes from this identity, not 333 times a second.
        seen = (node.spec.hostname, caller.issued)
        if self._hostnames_checked.get(node.name) != seen:
            await self.check_announced_hostname(node)
            if len(self._hostnames_checked) >= HOSTNAMES_CHECKED:
                self._hostnames_checked.clear()
            self._hostnames_checked[node.name] = seen

    async def _audit_refused_beat(
        self, caller: Identity, exc: AccessDenied, **fields: str | None
    ) -> None:
        """`heartbeat.failure`, once per identity and reason: a refused service beats on
        every interval, and one event says what a thousand would."""
        said = ":".join(f"{k}={v}" for k, v in sorted(fields.items()))
        key = f"heartbeat.failure:{caller.username}:{caller.issued}:{said}:{exc.message}"
        uid = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        if uid not in self._beats_refused:
            if len(self._beats_refused) >= HOSTNAMES_CHECKED:
                self._beats_refused.clear()
            await self.audit.emit(
                "heartbeat.failure", uid=uid, name=caller.username, **fields, error=exc.message
            )
            self._beats_refused.add(uid)
        exc.audited = True

    async def kube_heartbeat(self, caller: Identity, cluster: KubeCluster, ttl: timedelta) -> None:
        """A kube service announces a cluster it forwards to (it names itself as service).

        A cluster name is one service's while its entry lives: the proxy sends every
        kubectl call for the cluster to the service the entry names, so another kube
        service announcing the same name would take that traffic over. It is refused
        until the first stops and its entry expires (then it takes the name over)."""
        spec = cluster.spec.model_copy(update={"service": caller.username})
        meta = cluster.metadata.model_copy(update={"expires": self.clock.now() + ttl})
        announced = cluster.model_copy(update={"metadata": meta, "spec": spec})
        try:
            held = await self.kube_clusters.get(cluster.name)
        except NotFound:
            try:
                await self.kube_clusters.create(announced)
                return
            except AlreadyExists:  # another service's first beat, just now
                held = await self.kube_clusters.get(cluster.name)
        if held.spec.service != caller.username:
            exc = AccessDenied(
                f'access denied: kubernetes cluster "{cluster.name}" is served by kube'
                f' service "{held.spec.service}"; another can serve that name only once it'
                " stops (its entry expires a heartbeat TTL after its last beat)"
            )
            await self._audit_refused_beat(caller, exc, kube_cluster=cluster.name)
            raise exc
        await self.kube_clusters.upsert(announced)

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
