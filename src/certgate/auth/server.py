"""The auth service's behaviour: logins, certificates, users, invites, tokens, joins,
resources. Callers are already authorized (see permissions.py); this layer trusts its
inputs and records what it does in the audit log.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from certgate.access.rbac import RoleSet, RoleSetCache, validate_role
from certgate.api.authority import CAType, CertAuthority
from certgate.api.bundle import CertBundle
from certgate.api.codec import Resource
from certgate.api.identity import SYSTEM_ADMIN, SYSTEM_KUBE, SYSTEM_NODE, SYSTEM_PROXY, Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock, lock_matches, lock_message
from certgate.api.meta import Metadata
from certgate.api.node import Node
from certgate.api.role import Role
from certgate.api.session_tracker import SessionTracker
from certgate.api.token import Token, TokenSpec
from certgate.api.user import INTERNAL_TRAITS, User
from certgate.auth.bootstrap import ensure_authorities, ensure_cluster_name, ensure_preset_roles
from certgate.auth.ca import ca_pin, host_ca_known_hosts_line, user_ca_trust_line
from certgate.auth.issuer import CertIssuer
from certgate.auth.login import LoginChecker
from certgate.auth.passwords import (
    check_password_policy,
    hash_password,
    match_totp,
    new_totp_secret,
    totp_uri,
)
from certgate.backend.base import Backend
from certgate.clock import Clock
from certgate.errors import AccessDenied, BadParameter, NotFound
from certgate.services.audit import AuditLog
from certgate.services.locks import LockCache
from certgate.services.store import ResourceStore
from certgate.services.users import Invite, UserSecrets, UserService, new_user

INVITE_TTL = timedelta(hours=1)
MAX_USER_TTL = timedelta(hours=30)
JOIN_ROLE_TO_SYSTEM = {"node": SYSTEM_NODE, "proxy": SYSTEM_PROXY, "kube": SYSTEM_KUBE}


@dataclass(frozen=True)
class InviteInfo:
    user: str
    totp_secret: str
    totp_uri: str


class AuthServer:
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
        self.roles: ResourceStore[Role] = ResourceStore(backend, "/roles/", Role, "role")
        self.tokens: ResourceStore[Token] = ResourceStore(backend, "/tokens/", Token, "token")
        self.locks: ResourceStore[Lock] = ResourceStore(backend, "/locks/", Lock, "lock")
        self.lock_cache = LockCache(backend, self.locks, self._lock_expired, clock)
        self.nodes: ResourceStore[Node] = ResourceStore(backend, "/nodes/", Node, "node")
        self.kube_clusters: ResourceStore[KubeCluster] = ResourceStore(
            backend, "/kube_clusters/", KubeCluster, "kubernetes cluster"
        )
        self.session_trackers: ResourceStore[SessionTracker] = ResourceStore(
            backend, "/sessions/", SessionTracker, "session"
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

    async def close(self) -> None:
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
            raise NotFound(f'user "{name}" not found')
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
        self, user: str, roles: tuple[str, ...] | list[str], request_ids: tuple[str, ...] = ()
    ) -> None:
        """AccessDenied with the lock's message if a lock targets this identity."""
        now = self.clock.now()
        for lock in self.lock_cache.all():
            if lock_matches(lock, user=user, roles=roles, request_ids=request_ids, now=now):
                raise AccessDenied(lock_message(lock))

    async def _issue_for_user(
        self,
        user: User,
        public_key: str,
        ttl: timedelta | None,
        request_ids: tuple[str, ...] = (),
        roles: list[Role] | None = None,
        not_after: datetime | None = None,
    ) -> CertBundle:
        """Certificates for `user`, expiring after `ttl` (capped) and never after
        `not_after`; `roles` are its roles if the caller read them already."""
        try:
            await self.check_not_locked(user.name, user.spec.roles, request_ids)
        except AccessDenied as exc:
            await self.audit.emit("cert.create.failure", user=user.name, error=exc.message)
            raise
        if roles is None:
            roles = await self.load_roles(user.spec.roles)
        role_set = self.role_sets.get(roles, user.spec.traits)
        ttl = min(ttl or timedelta(hours=8), MAX_USER_TTL)
        identity = self.issuer.user_identity(
            user, roles, ttl, request_ids, role_set, not_after=not_after
        )
        bundle = self.issuer.issue_user(identity, role_set, public_key)
        await self.audit.emit(
            "cert.create",
            user=user.name,
            roles=list(identity.roles),
            logins=list(identity.logins),
            expires=identity.expires.isoformat(),
        )
        return bundle

    # users and invites --------------------------------------------------------------

    async def add_user(
        self, name: str, roles: list[str], traits: dict[str, list[str]], created_by: str
    ) -> str:
        """Creates the user and returns its invite URL."""
        for role in roles:
            await self.roles.get(role)  # NotFound names the missing role
        for key in traits:
            if key not in INTERNAL_TRAITS:
                raise BadParameter(f'unknown trait "{key}": use {", ".join(INTERNAL_TRAITS)}')
        user = new_user(name, roles, traits, created_by, self.clock.now())
        await self.users.create(user)
        await self.audit.emit("user.create", user=created_by, name=name, roles=roles)
        return await self._new_invite(name, "invite")

    async def reset_user(self, name: str, by: str) -> str:
        """Clears the password and TOTP; the user sets new ones through a new invite."""
        user = await self.users.get(name)
        status = user.status.model_copy(update={"active": False, "failed_logins": 0})
        await self.users.update(user.model_copy(update={"status": status}))
        await self.users.put_secrets(name, UserSecrets())
        for invite in await self.users.list_invites():
            if invite.user == name:
                await self.users.delete_invite(invite.token)
        await self.audit.emit("user.reset", user=by, name=name)
        return await self._new_invite(name, "reset")

    async def delete_user(self, name: str, by: str) -> None:
        await self.users.delete(name)
        await self.audit.emit("user.delete", user=by, name=name)

    async def _new_invite(self, name: str, purpose: str) -> str:
        token = secrets.token_hex(16)
        invite = Invite(
            token=token,
            user=name,
            totp_secret=new_totp_secret(),
            expires=self.clock.now() + INVITE_TTL,
            purpose=purpose,
        )
        await self.users.create_invite(invite)
        return f"https://{self.proxy_public_addr}/web/invite/{token}"

    async def get_invite(self, token: str) -> InviteInfo:
        _check_token_text(token)
        invite = await self.users.get_invite(token)
        return InviteInfo(
            user=invite.user,
            totp_secret=invite.totp_secret,
            totp_uri=totp_uri(invite.totp_secret, invite.user, self.cluster_name),
        )

    async def complete_invite(self, token: str, password: str, otp: str, client_addr: str) -> None:
        _check_token_text(token)
        invite = await self.users.get_invite(token)
        check_password_policy(password)
        step = match_totp(invite.totp_secret, otp, self.clock.now())
        if step is None:
            raise AccessDenied(
                "access denied: the one-time code does not match; check the device's clock"
            )
        password_hash = await hash_password(password)
        # Delete first: of two racing completions only one finds the invite to delete.
        await self.users.consume_invite(token)
        await self.users.put_secrets(
            invite.user,
            UserSecrets(
                password_hash=password_hash, totp_secret=invite.totp_secret, last_otp_step=step
            ),
        )
        user = await self.users.get(invite.user)
        status = user.status.model_copy(update={"active": True, "locked_until": None})
        await self.users.update(user.model_copy(update={"status": status}))
        await self.audit.emit("user.invite.complete", user=invite.user, addr=client_addr)

    # join tokens and service identities ---------------------------------------------------

    async def add_token(self, roles: list[str], ttl: timedelta, by: str) -> Token:
        token = Token(
            metadata=Metadata(name=secrets.token_hex(16), expires=self.clock.now() + ttl),
            spec=TokenSpec(roles=roles, created_by=by),  # type: ignore[arg-type]
        )
        created = await self.tokens.create(token)
        await self.audit.emit(
            "token.create", user=by, roles=roles, expires=str(token.metadata.expires)
        )
        return created

    def ca_pin(self) -> str:
        return ca_pin(self.issuer.authorities["host_tls"])

    async def join(
        self,
        token_name: str,
        role: str,
        public_key: str,
        name: str,
        principals: list[str],
        client_addr: str,
    ) -> CertBundle:
        """A host proves it holds a join token and gets its service certificates."""
        system_role = JOIN_ROLE_TO_SYSTEM.get(role)
        if system_role is None:
            raise BadParameter(f'cannot join as "{role}": use node, proxy or kube')
        try:
            _check_token_text(token_name)
            token = await self.tokens.get(token_name)
        except (NotFound, BadParameter):
            await self.audit.emit(
                "join.failure",
                name=name,
                role=role,
                addr=client_addr,
                error="unknown or expired token",
            )
            raise AccessDenied(
                "access denied: the join token is unknown or expired: "
                "create a new one with 'cgctl tokens add'"
            ) from None
        if role not in token.spec.roles:
            raise AccessDenied(f'access denied: this join token does not allow the role "{role}"')
        bundle = self.issue_service_identity(name, system_role, public_key, principals)
        await self.audit.emit("join", name=name, role=role, addr=client_addr)
        return bundle

    def issue_service_identity(
        self, name: str, system_role: str, public_key: str, principals: list[str]
    ) -> CertBundle:
        # `<name>.<cluster>` too, so `ssh web-1.example.com` through the proxy verifies.
        names = list(dict.fromkeys([name, f"{name}.{self.cluster_name}", *principals]))
        return self.issuer.issue_service(name, system_role, public_key, names)

    def issue_admin_identity(self, public_key: str) -> CertBundle:
        return self.issuer.issue_service(
            "admin", SYSTEM_ADMIN, public_key, ["admin"], ttl=timedelta(days=30)
        )

    # inventory ----------------------------------------------------------------------

    async def heartbeat(self, caller: Identity, node: Node, ttl: timedelta) -> None:
        """A node announces itself; it disappears when it stops (the item expires)."""
        if node.name != caller.username:
            raise AccessDenied(
                f'access denied: node "{caller.username}" cannot announce "{node.name}"'
            )
        meta = node.metadata.model_copy(update={"expires": self.clock.now() + ttl})
        await self.nodes.upsert(node.model_copy(update={"metadata": meta}))

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
        """The clusters the caller's roles give access to (what `cgsh kube ls` shows)."""
        roles = await self.load_roles(list(caller.roles))
        role_set = RoleSet(roles, caller.traits)
        clusters = await self.kube_clusters.list()
        return [c for c in clusters if role_set.can_access_kube(c.metadata.labels)]

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

    # resources ----------------------------------------------------------------------

    def store_for(self, kind: str) -> ResourceStore[Any]:
        stores: dict[str, ResourceStore[Any]] = {
            "role": self.roles,
            "user": self.users.users,
            "token": self.tokens,
            "lock": self.locks,
            "node": self.nodes,
            "kube_cluster": self.kube_clusters,
            "cert_authority": self.authorities,
        }
        if kind not in stores:
            raise BadParameter(f'unknown kind "{kind}": use {", ".join(stores)}')
        return stores[kind]

    async def get_resources(self, kind: str, name: str | None) -> list[BaseModel]:
        store = self.store_for(kind)
        items = [await store.get(name)] if name else await store.list()
        if kind == "cert_authority":
            items = [ca.without_secrets() for ca in items]
        return items

    async def put_resource(self, resource: Resource, by: str, upsert: bool) -> BaseModel:
        if isinstance(resource, Role):
            validate_role(resource)
        if isinstance(resource, CertAuthority):
            raise BadParameter("certificate authorities are created by auth and cannot be set")
        if isinstance(resource, User):
            for role in resource.spec.roles:
                await self.roles.get(role)
        store = self.store_for(resource.kind)
        saved: BaseModel = await (store.upsert(resource) if upsert else store.create(resource))
        if isinstance(resource, Lock):
            await self.audit.emit(
                "lock.created",
                user=by,
                name=resource.name,
                target=resource.spec.target.describe(),
                message=resource.spec.message,
                expires=resource.metadata.expires.isoformat()
                if resource.metadata.expires
                else None,
            )
        else:
            event = "role.created" if resource.kind == "role" else "resource.created"
            await self.audit.emit(event, user=by, kind=resource.kind, name=resource.metadata.name)
        return saved

    async def delete_resource(self, kind: str, name: str, by: str) -> None:
        if kind == "user":
            await self.delete_user(name, by)
            return
        if kind == "cert_authority":
            raise BadParameter("certificate authorities cannot be deleted")
        await self.store_for(kind).delete(name)
        event = {"role": "role.deleted", "token": "token.delete", "lock": "lock.deleted"}.get(
            kind, "resource.deleted"
        )
        await self.audit.emit(event, user=by, kind=kind, name=name)

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


def _check_token_text(token: str) -> None:
    # Tokens are hex; anything else (slashes, dots) is refused before it reaches a key.
    if not token or len(token) > 128 or not all(c in "0123456789abcdef" for c in token):
        raise NotFound("invite not found or expired: ask your admin for a new one")
