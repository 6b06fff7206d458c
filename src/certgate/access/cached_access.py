"""Decisions of proxies and nodes, made from their live view of roles, locks and nodes.

They decide without a round trip to auth, and go on deciding while auth is briefly
unreachable (the view is fed by auth's watch stream, see rpc/watcher.py).

check_identity(identity)        -> None or AccessDenied   (locks, roles that exist)
resolve_node(identity, target)  -> Node or NotFound/AccessDenied/BadParameter (ambiguous)
check_join(identity, owner, ...) -> None or AccessDenied   (cgsh join)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from certgate.access.rbac import RoleSet
from certgate.access.requests import check_resource, resource_allowed
from certgate.api.host_names import addr_host, host_key
from certgate.api.identity import Identity
from certgate.api.lock import Lock, lock_matches, lock_message
from certgate.api.node import Node
from certgate.api.role import Role
from certgate.clock import Clock, SystemClock
from certgate.errors import AccessDenied, BadParameter, NotFound
from certgate.rpc.watcher import ResourceView

# How far past its expiry a node stays routable while the view follows auth's watch.
EXPIRY_LAG_ALLOWANCE = timedelta(minutes=5)


class CachedAccess:
    def __init__(
        self,
        view: ResourceView,
        cluster_name: str = "",
        clock: Clock | None = None,
        strict_grace: float = 30.0,
    ) -> None:
        self._view = view
        # For roles with `locking_mode: strict`: how long this view may go without word
        # from auth before their holders are refused (and their sessions ended).
        self.strict_grace = strict_grace
        self._cluster_suffix = f".{cluster_name}" if cluster_name else ""
        self._clock = clock or SystemClock()

    def role_set(self, identity: Identity) -> RoleSet:
        roles = []
        for name in identity.roles:
            role = self._view.get("role", name)
            if not isinstance(role, Role):
                raise AccessDenied(
                    f'access denied: role "{name}" of your certificate no longer exists'
                )
            roles.append(role)
        return RoleSet(roles, identity.traits)

    def lock_for(self, identity: Identity, login: str = "", node: str = "") -> Lock | None:
        now = self._clock.now()
        for lock in self._view.all("lock"):
            assert isinstance(lock, Lock)
            if lock_matches(
                lock,
                user=identity.username,
                roles=identity.roles,
                request_ids=identity.request_ids,
                login=login,
                node=node,
                now=now,
                issued=identity.issued,
            ):
                return lock
        return None

    def check_identity(self, identity: Identity, login: str = "", node: str = "") -> None:
        lock = self.lock_for(identity, login, node)
        if lock is not None:
            raise AccessDenied(lock_message(lock))
        if self.strict_and_cut_off(identity):
            raise AccessDenied(
                "access denied: locked: this service cannot confirm locks with auth, "
                "and your roles require it (locking_mode: strict)"
            )

    def view_is_stale(self) -> bool:
        return self._view.seconds_since_contact() > self.strict_grace

    def strict_and_cut_off(self, identity: Identity) -> bool:
        """True when the lock view is stale and one of the identity's roles is strict."""
        if not self.view_is_stale():
            return False
        try:
            return self.role_set(identity).options().locking_mode == "strict"
        except AccessDenied:
            return True

    def check_login(
        self, identity: Identity, node_name: str, node_labels: dict[str, str], login: str
    ) -> RoleSet:
        """Refuses (AccessDenied) unless the roles allow `login` here and no lock applies."""
        role_set = self.role_set(identity)
        role_set.check_login(node_name, node_labels, login)
        check_resource(identity.resources, "node", node_name, f"{login}@{node_name}")
        self.check_identity(identity, login=login, node=node_name)
        return role_set

    def check_join(
        self,
        identity: Identity,
        owner_user: str,
        owner_roles: tuple[str, ...] | list[str],
        mode: str,
        node: str,
        kind: str = "ssh",
    ) -> None:
        """Refuses (AccessDenied) unless `identity` may join that user's `kind` session
        ("ssh" or "k8s") in `mode`.

        Owners may always join their own sessions (from a second terminal)."""
        self.check_identity(identity, node=node)
        if identity.username == owner_user:
            return
        if mode not in self.role_set(identity).join_modes(owner_roles, kind):
            what = "kubernetes sessions" if kind == "k8s" else "sessions"
            raise AccessDenied(
                f"access denied: your roles do not allow joining {owner_user}'s {what} "
                f"as {mode} (role option join_sessions)"
            )

    def find_node(self, target: str, shown: Callable[[Node], bool] | None = None) -> Node:
        """The node named `target`; else the one node whose hostname or address host it is.

        A name always wins: names are unique and held from the join on, while hostnames
        and addresses are what nodes announce. A string that is the hostname or address
        of several nodes names none of them (BadParameter naming them), so a node that
        announces another's hostname or address cannot draw its users. `shown` says which
        nodes that message may name (those the caller's roles see); never an arbitrary
        address. `web-1.<cluster name>` names node `web-1` (what `cgsh config` lets ssh use)."""
        if self._cluster_suffix and target.endswith(self._cluster_suffix):
            target = target[: -len(self._cluster_suffix)]
        nodes = [n for n in self._view.all("node") if isinstance(n, Node)]
        # While the watch is up, the store says when a node expired (a delete event, in
        # order with its heartbeats): a view that lags a few seconds at 10,000 nodes
        # must not drop nodes whose newer heartbeat is still on its way. Only a view cut
        # off from auth, or one far behind, judges expiry by its own clock.
        allowance = EXPIRY_LAG_ALLOWANCE if self._view.connected else timedelta(0)
        horizon = self._clock.now() - allowance
        live = [n for n in nodes if n.metadata.expires is None or n.metadata.expires > horizon]
        for node in live:
            if node.metadata.name == target:
                return node
        key = host_key(target)
        found: list[tuple[Node, str]] = []
        for node in live:
            ways = [
                what
                for what, value in (
                    ("hostname", node.spec.hostname),
                    ("address", addr_host(node.spec.addr)),
                )
                if value and host_key(value) == key
            ]
            if ways:
                found.append((node, " and ".join(ways)))
        if len(found) == 1:
            return found[0][0]
        named = [f"{n.name} by {how}" for n, how in found if shown is None or shown(n)]
        if len(found) > 1 and named:
            hidden = len(found) - len(named)
            more = f", {hidden} more" if hidden else ""
            raise BadParameter(
                f'"{target}" names {len(found)} nodes ({", ".join(named)}{more}): '
                "use the node's name"
            )
        raise NotFound(f'node "{target}" not found')

    def resolve_node(self, identity: Identity, target: str) -> Node:
        role_set = self.role_set(identity)

        def visible(node: Node) -> bool:
            return role_set.can_access_node(node.metadata.labels) and resource_allowed(
                identity.resources, "node", node.name
            )

        node = self.find_node(target, shown=visible)
        if not visible(node):
            # The same answer as for a missing node: roles decide what a user may see.
            raise NotFound(f'node "{target}" not found')
        self.check_identity(identity, node=node.name)
        return node
