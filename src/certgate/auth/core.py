"""The auth service's core: its stores, CAs, lock cache, roles, logins and certificates.

The behaviour per resource builds on this (users_admin.py, joining.py, inventory.py,
resources.py) and server.py puts the parts together as `AuthServer`. Callers are
already authorized (see permissions.py); this layer trusts its inputs and records what
it does in the audit log.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from certgate.access.rbac import RoleSetCache
from certgate.api.access_request import AccessRequest
from certgate.api.authority import CAType, CertAuthority
from certgate.api.bundle import CertBundle
from certgate.api.identity import Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock, lock_matches, lock_message
from certgate.api.node import Node
from certgate.api.role import Role
from certgate.api.session_tracker import SessionTracker
from certgate.api.token import Token
from certgate.api.user import User
from certgate.auth.bootstrap import ensure_authorities, ensure_cluster_name, ensure_preset_roles
from certgate.auth.ca import CLOCK_SKEW, host_ca_known_hosts_line, user_ca_trust_line
from certgate.auth.issuer import CertIssuer
from certgate.auth.login import LoginChecker
from certgate.backend.base import Backend
from certgate.clock import Clock
from certgate.errors import AccessDenied, BadParameter, NotFound
from certgate.services.audit import AuditLog
from certgate.services.batched_writer import BatchedWriter
from certgate.services.host_names import HostNames
from certgate.services.locks import LockCache
from certgate.services.node_aliases import NodeAliases
from certgate.services.prefix_mirror import PrefixMirror
from certgate.services.store import ResourceStore
from certgate.services.users import UserService

MAX_USER_TTL = timedelta(hours=30)
# Decoded nodes kept (above the 10,000 nodes one auth is sized for).
NODES_DECODED = 32_768
# While heartbeats come steadily, their batches are written at most this often (each
# beat waits up to this long for others to join it): at 10,000 nodes a batch per
# round trip carried one or two beats, each batch a transaction, a NOTIFY and a
# watch feed read.
HEARTBEAT_BATCH_SPACING = 0.02


class AuthCore:
    """State shared by every part of the auth service, plus logins and certificates."""

    def __init__(
        self,
        backend: Backend,
        audit: AuditLog,
        clock: Clock,
        cluster_name: str,
        proxy_public_addr: str,
        auth_addr: str,
    ) -> None:
        self.backend = backend
        self.audit = audit
        self.clock = clock
        self.requested_cluster_name = cluster_name
        self.cluster_name = cluster_name
        self.proxy_public_addr = proxy_public_addr
        self.auth_addr = auth_addr
        self.users = UserService(backend)
        self.host_names = HostNames(backend, clock)
        self.roles: ResourceStore[Role] = ResourceStore(backend, "/roles/", Role, "role")
        self.tokens: ResourceStore[Token] = ResourceStore(backend, "/tokens/", Token, "token")
        self.locks: ResourceStore[Lock] = ResourceStore(backend, "/locks/", Lock, "lock")
        self.lock_cache = LockCache(backend, self.locks, self._lock_expired, clock)
        # Every node decoded is kept (a few KiB each): `cgsh ls` at 10,000 nodes then
        # decodes only those that beat since the last call, not all 10,000 per call.
        self.nodes: ResourceStore[Node] = ResourceStore(
            backend, "/nodes/", Node, "node", cache_size=NODES_DECODED
        )
        self.node_writer = BatchedWriter(
            backend, "node heartbeats", spacing=HEARTBEAT_BATCH_SPACING
        )
        # Which node each name, hostname and address is (joins and heartbeats may not
        # take another's), kept from the mirror.
        self.node_aliases = NodeAliases()
        # For heartbeats (inventory.py): per node, the hostname and identity last
        # checked, and the uids of refused beats already audited.
        self._hostnames_checked: dict[str, tuple[str, datetime | None]] = {}
        self._beats_refused: set[str] = set()
        # What `cgsh ls` lists from, instead of reading every node per call.
        self.node_mirror = PrefixMirror(backend, self.nodes.prefix, clock, self.node_aliases)
        self.kube_clusters: ResourceStore[KubeCluster] = ResourceStore(
            backend, "/kube_clusters/", KubeCluster, "kubernetes cluster"
        )
        self.session_trackers: ResourceStore[SessionTracker] = ResourceStore(
            backend, "/sessions/", SessionTracker, "session"
        )
        self.access_requests: ResourceStore[AccessRequest] = ResourceStore(
            backend, "/access_requests/", AccessRequest, "access request"
        )
        self.authorities: ResourceStore[CertAuthority] = ResourceStore(
            backend, "/authorities/", CertAuthority, "certificate authority"
        )
        self.login_checker = LoginChecker(backend, self.users, audit, clock)
        self.role_sets = RoleSetCache()
        self._issuer: CertIssuer | None = None

    async def start(self) -> None:
        self.cluster_name = await ensure_cluster_name(self.backend, self.requested_cluster_name)
        cas = await ensure_authorities(self.authorities, self.cluster_name, self.clock)
        await ensure_preset_roles(self.roles)
        self._issuer = CertIssuer(cas, self.clock)
        await self.lock_cache.start()
        await self.host_names.start()
        await self.node_mirror.start()

    async def close(self) -> None:
        await self.node_writer.close()
        await self.node_mirror.close()
        await self.host_names.close()
        await self.lock_cache.close()

    async def _lock_expired(self, lock: Lock) -> None:
        # The same uid from every auth process that sees the expiry: stored once.
        uid = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"lock-expired:{lock.name}:{lock.metadata.expires}")
        )
        await self.audit.emit(
            "lock.expired",
            uid=uid,
            name=lock.name,
            target=lock.spec.target.describe(),
            user=lock.spec.created_by,
        )

    @property
    def issuer(self) -> CertIssuer:
        assert self._issuer is not None, "AuthServer.start() first"
        return self._issuer

    # roles -------------------------------------------------------------------------

    async def load_roles(self, names: list[str]) -> list[Role]:
        """The roles as stored now (read on every call: a change applies at once)."""
        return await self.roles.get_many(names)

    async def user_with_roles(
        self, name: str, likely_roles: Sequence[str]
    ) -> tuple[User, list[Role]]:
        """The user and its roles as stored now.

        One read of the store when `likely_roles` (the roles its certificate names) are
        still the user's roles, the usual case; roles it has gained since are read next.
        """
        user_key = self.users.users.key(name)
        keys = [user_key, *(self.roles.key(role) for role in likely_roles)]
        items = {item.key: item for item in await self.backend.get_many(keys)}
        if user_key not in items:
            raise NotFound(f'user "{name}" no longer exists')
        user = self.users.users.decode(items[user_key])
        others = [role for role in user.spec.roles if self.roles.key(role) not in items]
        read_after = (
            {role.name: role for role in await self.roles.get_many(others)} if others else {}
        )
        roles = [
            read_after[role]
            if role in read_after
            else self.roles.decode(items[self.roles.key(role)])
            for role in user.spec.roles
        ]
        return user, roles

    # logins and certificates -----------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        otp: str,
        public_key: str,
        ttl: timedelta | None,
        client_addr: str,
    ) -> CertBundle:
        user = await self.login_checker.check(username, password, otp, client_addr)
        bundle = await self._issue_for_user(user, public_key, ttl)
        await self.audit.emit("user.login", user=username, success=True, addr=client_addr)
        return bundle

    async def renew(self, caller: Identity, public_key: str, ttl: timedelta | None) -> CertBundle:
        """New certificates for a logged-in user: roles and traits are read afresh, and
        the new certificates never outlive the ones presented."""
        user, roles = await self.user_with_roles(caller.username, caller.roles)
        remaining = caller.expires - self.clock.now()
        wanted = min(ttl, remaining) if ttl else remaining
        if wanted <= timedelta(0):
            raise AccessDenied("access denied: certificate expired; log in again")
        return await self._issue_for_user(
            user, public_key, wanted, caller.request_ids, roles, not_after=caller.expires
        )

    async def check_not_locked(
        self,
        user: str,
        roles: tuple[str, ...] | list[str],
        request_ids: tuple[str, ...] = (),
        issued: datetime | None = None,
    ) -> None:
        """AccessDenied with the lock's message if a lock targets this identity (whose
        certificate was issued at `issued`, if known); ConnectionProblem if auth cannot
        tell (cut off from its store)."""
        locks = await self.lock_cache.current()
        now = self.clock.now()
        for lock in locks:
            if lock_matches(
                lock, user=user, roles=roles, request_ids=request_ids, now=now, issued=issued
            ):
                raise AccessDenied(lock_message(lock))

    async def _issue_for_user(
        self,
        user: User,
        public_key: str,
        ttl: timedelta | None,
        request_ids: tuple[str, ...] = (),
        roles: list[Role] | None = None,
        not_after: datetime | None = None,
        resources: tuple[str, ...] = (),
    ) -> CertBundle:
        """Certificates for `user`, expiring after `ttl` (capped) and never after
        `not_after`; `roles` are its roles if the caller read them already (with those
        of `request_ids`, which may limit it to `resources`)."""
        # What the new certificates will say of their issue time: a lock on the user's
        # older certificates (user_cuts.py) does not catch them.
        starts = self.issuer.signing_time()
        try:
            await self.check_not_locked(
                user.name, user.spec.roles, request_ids, issued=starts - CLOCK_SKEW
            )
        except AccessDenied as exc:
            await self.audit.emit("cert.create.failure", user=user.name, error=exc.message)
            exc.audited = True
            raise
        if roles is None:
            roles = await self.load_roles(user.spec.roles)
        role_set = self.role_sets.get(roles, user.spec.traits)
        ttl = min(ttl or timedelta(hours=8), MAX_USER_TTL)
        identity = self.issuer.user_identity(
            user, roles, ttl, request_ids, role_set, not_after=not_after, resources=resources
        )
        bundle = self.issuer.issue_user(identity, role_set, public_key, not_before=starts)
        await self.audit.emit(
            "cert.create",
            user=user.name,
            roles=list(identity.roles),
            logins=list(identity.logins),
            expires=identity.expires.isoformat(),
        )
        return bundle

    # CA export -----------------------------------------------------------------------

    def export_authority(self, kind: str) -> str:
        if kind == "user":
            return user_ca_trust_line(self.issuer.authorities["user_ssh"])
        if kind == "host":
            return host_ca_known_hosts_line(self.issuer.authorities["host_ssh"])
        if kind in ("tls-user", "tls-host"):
            ca_type: CAType = "user_tls" if kind == "tls-user" else "host_tls"
            return "".join(k.public for k in self.issuer.authorities[ca_type].spec.active_keys)
        raise BadParameter(f'unknown CA type "{kind}": use user, host, tls-user or tls-host')


def check_token_text(token: str) -> None:
    # Tokens are hex; anything else (slashes, dots) is refused before it reaches a key.
    if not token or len(token) > 128 or not all(c in "0123456789abcdef" for c in token):
        raise NotFound("invite not found or expired: ask your admin for a new one")
