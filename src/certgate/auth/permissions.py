"""The one place where an API caller is checked before any work is done.

Every auth API route names what it needs as (resource, verb). `Authorizer.check`
answers for the caller behind the request:

- service identities (host certs from joining) get a fixed set per system role;
- the auth host's admin identity may do everything;
- users get what their roles' `rules` allow (deny wins), read from the store so a
  role change applies at once, without new certificates. The user record is read too:
  a deleted user is refused, and only the certificate's roles the user still holds
  count (a demoted admin's old certificate no longer carries the admin role).

Code below this layer trusts its inputs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime

from certgate.access.rbac import RoleSet, RoleSetCache
from certgate.api.identity import (
    SYSTEM_ADMIN,
    SYSTEM_KUBE,
    SYSTEM_NODE,
    SYSTEM_PROXY,
    Identity,
)
from certgate.api.role import Role
from certgate.api.user import User
from certgate.errors import AccessDenied, NotFound

# Pseudo-resources for actions that are not resource CRUD.
LOGIN = "login"  # passing a user's password login on (proxies)
INVITE = "invite"  # reading and completing invites on a user's behalf (proxies)
HEARTBEAT = "heartbeat"  # announcing oneself in the inventory (nodes, kube, proxies)
AUDIT_WRITE = "audit_write"  # sending audit events to auth (every service)
SELF = "self"  # own certificates and profile (every authenticated user)
RECORDING_WRITE = "recording_write"  # uploading session recordings (nodes)
AGENTLESS = "agentless"  # certificates to terminate SSH for agentless nodes (proxies)
SESSION_WRITE = "session_write"  # registering live session trackers (nodes, proxies)

_SERVICE_GRANTS: dict[str, set[tuple[str, str]]] = {
    SYSTEM_PROXY: {
        (LOGIN, "create"),
        (AGENTLESS, "create"),
        (RECORDING_WRITE, "create"),  # sessions of agentless nodes are recorded here
        (SESSION_WRITE, "update"),  # and tracked here
        (SESSION_WRITE, "delete"),
        ("session", "list"),  # live sessions, to let joiners through to their nodes
        (INVITE, "read"),
        (INVITE, "update"),
        (HEARTBEAT, "update"),
        (AUDIT_WRITE, "create"),
        ("node", "list"),
        ("node", "read"),
        ("kube_cluster", "list"),
        ("kube_cluster", "read"),
        ("role", "list"),
        ("role", "read"),
        ("lock", "list"),
        ("lock", "read"),
        ("cert_authority", "read"),
        ("cert_authority", "list"),
        ("user", "read"),
    },
    SYSTEM_NODE: {
        (HEARTBEAT, "update"),
        (AUDIT_WRITE, "create"),
        (RECORDING_WRITE, "create"),
        (SESSION_WRITE, "update"),
        (SESSION_WRITE, "delete"),
        ("role", "list"),
        ("role", "read"),
        ("lock", "list"),
        ("lock", "read"),
        ("cert_authority", "read"),
        ("cert_authority", "list"),
    },
}
_SERVICE_GRANTS[SYSTEM_KUBE] = set(_SERVICE_GRANTS[SYSTEM_NODE])

# Pseudo-resources no user role can grant.
_SERVICE_ONLY = (LOGIN, INVITE, HEARTBEAT, AUDIT_WRITE, RECORDING_WRITE, AGENTLESS, SESSION_WRITE)

RoleLoader = Callable[[list[str]], Awaitable[list[Role]]]


LockCheck = Callable[[str, tuple[str, ...], tuple[str, ...], datetime | None], Awaitable[None]]
# (user name, the roles its certificate names) -> the user and its roles as stored now;
# NotFound when the user is gone.
UserLoader = Callable[[str, Sequence[str]], Awaitable[tuple[User, list[Role]]]]
# The caller -> the roles its certificate's access requests grant now (none once a
# grant has ended, been locked or is not the caller's).
GrantLoader = Callable[[Identity], Awaitable[list[Role]]]


class Authorizer:
    def __init__(
        self,
        load_roles: RoleLoader,
        role_sets: RoleSetCache | None = None,
        check_not_locked: LockCheck | None = None,
        load_user: UserLoader | None = None,
        load_grants: GrantLoader | None = None,
    ) -> None:
        self._load_roles = load_roles
        self._role_sets = role_sets or RoleSetCache()
        self._check_not_locked = check_not_locked
        self._load_user = load_user
        self._load_grants = load_grants

    async def check(self, caller: Identity | None, resource: str, verb: str) -> Identity:
        """The caller, if it may `verb` on `resource`; AccessDenied otherwise."""
        if caller is None:
            raise AccessDenied("access denied: this call needs a certgate certificate")
        if caller.kind == "service":
            if SYSTEM_ADMIN in caller.roles:
                return caller
            for role in caller.roles:
                if (resource, verb) in _SERVICE_GRANTS.get(role, set()):
                    return caller
            raise AccessDenied(
                f"access denied: service {caller.username} may not {verb} {resource}"
            )
        held: list[Role] | None = None
        if self._load_user is not None:
            caller, held = await self._current(caller, self._load_user, self._load_grants)
        if self._check_not_locked is not None:
            # A locked user can do nothing with a still-valid certificate.
            await self._check_not_locked(
                caller.username, caller.roles, caller.request_ids, caller.issued
            )
        if resource == SELF:
            return caller
        if resource in _SERVICE_ONLY:
            raise AccessDenied(f"access denied: only cluster services may use {resource}")
        if held is not None:
            role_set = self._role_sets.get(held, caller.traits)
        else:
            role_set = await self.role_set(caller)
        if not role_set.allows_rule(resource, verb):
            raise AccessDenied(f'access denied: your roles do not allow "{verb}" on "{resource}"')
        return caller

    async def role_set(self, caller: Identity) -> RoleSet:
        try:
            roles = await self._load_roles(list(caller.roles))
        except NotFound as exc:
            raise AccessDenied(f"access denied: {exc}") from None
        return self._role_sets.get(roles, caller.traits)

    @staticmethod
    async def _current(
        caller: Identity, load_user: UserLoader, load_grants: GrantLoader | None
    ) -> tuple[Identity, list[Role]]:
        """The caller with only the roles its user still holds or its access requests
        still grant, and those roles."""
        try:
            _user, roles = await load_user(caller.username, caller.roles)
        except NotFound as exc:  # the user is gone (or one of its roles is)
            raise AccessDenied(f"access denied: {exc.message}") from None
        if caller.request_ids and load_grants is not None:
            names = {role.name for role in roles}
            roles += [role for role in await load_grants(caller) if role.name not in names]
        held = [role for role in roles if role.name in caller.roles]
        return replace(caller, roles=tuple(role.name for role in held)), held
