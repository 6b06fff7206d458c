"""The names a host may take, so that no node answers for another.

Users reach a node by its name, its hostname or its address (access/cached_access.py
find_node), and their clients trust whatever host certificate names what they typed. So:

    join       its name and principals must be no other node's name, hostname or
               address, nor the proxy's or auth's public host name (for nodes and kube
               services: a proxy's certificate is for the proxy's name)
    heartbeat  its hostname must be no other node's name or address, nor an agentless
               node's hostname (nodes on one machine share a hostname: that hostname
               then names none of them, find_node says so; and it may be the name of
               a node at the same address, whose name wins)

Loopback names (localhost, 127.0.0.1, ::1) are every host's own and stay allowed as
principals: nothing sent to them leaves the machine. A principal that is another node's
address is allowed when the host joins from that address (two nodes on one machine).
"""

from __future__ import annotations

from certgate.api.host_names import addr_host, host_key, is_loopback
from certgate.api.node import Node
from certgate.auth.core import AuthCore
from certgate.errors import AccessDenied
from certgate.services.node_aliases import ADDRESS, HOSTNAME, NAME, NodeAliases


class HostNameRules(AuthCore):
    async def current_node_aliases(self) -> NodeAliases:
        """The index kept from the node mirror, or one read from the store while the
        mirror's watch is down."""
        if self.node_mirror.current:
            return self.node_aliases
        aliases = NodeAliases()
        aliases.reset(await self.backend.range(self.nodes.prefix))
        return aliases

    def cluster_host_names(self) -> dict[str, str]:
        """host key -> what it is, for the cluster's own public host names."""
        named = {
            "the proxy's public address": addr_host(self.proxy_public_addr),
            "auth's address": addr_host(self.auth_addr),
        }
        return {
            host_key(host): what
            for what, host in named.items()
            if host and not is_loopback(host) and host_key(host) not in ("0.0.0.0", "::")
        }

    async def check_join_names(
        self, role: str, name: str, principals: list[str], client_addr: str
    ) -> None:
        """AccessDenied if the joining host's name or a principal is another node's or
        the cluster's own (the module docstring says what is refused)."""
        aliases = await self.current_node_aliases()
        now = self.clock.now()
        public = self.cluster_host_names() if role != "proxy" else {}
        own = {host_key(name), host_key(f"{name}.{self.cluster_name}")}
        joined_from = host_key(client_addr) if client_addr else ""
        suffix = f".{self.cluster_name}"
        # (value, how a refusal names it, whether it is a principal)
        checked = [(name, f'the name "{name}"', False)]
        for principal in principals:
            if host_key(principal) in own or is_loopback(principal):
                continue
            checked.append((principal, f'principal "{principal}"', True))
        for value, what, is_principal in checked:
            key = host_key(value)
            if key in public:
                raise AccessDenied(f"access denied: {what} is {public[key]}; pick another")
            bases = {value, value[: -len(suffix)] if value.endswith(suffix) else value}
            for base in sorted(bases):
                for other, ways in sorted(aliases.owners(base, now).items()):
                    if other == name:
                        continue  # this host's own node (a proxy or kube service beside it)
                    at_it = is_principal and base == value and key == joined_from
                    if ways == {ADDRESS} and at_it:
                        continue  # this host is at that address too (one machine)
                    if base != value and NAME not in ways:
                        continue  # `x.<cluster>` is a node's name only
                    raise AccessDenied(
                        f'access denied: {what} is the {_ways(ways)} of node "{other}"; '
                        "pick another"
                    )

    async def check_announced_hostname(self, node: Node) -> None:
        """AccessDenied if the hostname `node` announces is another node's name or
        address, or an agentless node's hostname."""
        hostname = node.spec.hostname
        if not hostname or host_key(hostname) == host_key(node.name):
            return
        aliases = await self.current_node_aliases()
        now = self.clock.now()
        # Nodes at this node's address: on its machine, whose hostname it shares.
        neighbours = aliases.owners(addr_host(node.spec.addr), now)
        for other, ways in sorted(aliases.owners(hostname, now).items()):
            if other == node.name:
                continue
            if ways == {NAME} and ADDRESS in neighbours.get(other, set()):
                # The machine's other node, named after it (`certgate start` names its
                # node after the host): its name still wins (find_node).
                continue
            if NAME in ways or ADDRESS in ways or aliases.is_agentless(other):
                raise AccessDenied(_hostname_taken(node, other, ways))
        holder = await self.host_names.holder("node", hostname)
        if holder is not None and hostname not in aliases.owners(hostname, now):
            # Joined, and not announced yet.
            raise AccessDenied(_hostname_taken(node, hostname, {NAME}))


def _ways(ways: set[str]) -> str:
    order = (NAME, HOSTNAME, ADDRESS)
    return " and ".join(w for w in order if w in ways)


def _hostname_taken(node: Node, other: str, ways: set[str]) -> str:
    return (
        f'access denied: node "{node.name}" announces hostname "{node.spec.hostname}", '
        f'the {_ways(ways)} of node "{other}": rename this host or remove the other node'
    )
