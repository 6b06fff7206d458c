"""The one place where an API caller is checked before any work is done.

Every auth API route names what it needs as (resource, verb). `Authorizer.check`
answers for the caller behind the request:

- service identities (host certs from joining) get a fixed set per system role;
- the auth host's admin identity may do everything;
- users get what their roles' `rules` allow (deny wins), read from the store so a
  role change applies at once, without new certificates.

Code below this layer trusts its inputs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from certgate.access.rbac import RoleSet, RoleSetCache
from certgate.api.identity import (
    SYSTEM_ADMIN,
    SYSTEM_KUBE,
    SYSTEM_NODE,
    SYSTEM_PROXY,
    Identity,
)
from certgate.api.role import Role
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


LockCheck = Callable[[str, tuple[str, ...], tuple[str, ...]], Awaitable[None]]


class Authorizer:
    def __init__(
        self,
        load_roles: RoleLoader,
        role_sets: RoleSetCache | None = None,
        check_not_locked: LockCheck | None = None,
    ) -> None:
        self._load_roles = load_roles
        self._role_sets = role_sets or RoleSetCache()
        self._check_not_locked = check_not_locked

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
        if self._check_not_locked is not None:
            # A locked user can do nothing with a still-valid certificate.
            await self._check_not_locked(caller.username, caller.roles, caller.request_ids)
        if resource == SELF:
            return caller
        if resource in _SERVICE_ONLY:
            raise AccessDenied(f"access denied: only cluster services may use {resource}")
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
