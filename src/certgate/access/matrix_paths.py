"""The ways a user may hold access now, for the access matrix's node and kube rows.

    user, roles, requests, now ──> user_paths() ──> [standing, request 1, request 2, ...]

A path is what one certificate would carry: standing is the user's own roles; each
approved access request whose access has not ended adds its roles and limits the
certificate to the resources it names (as `cgsh login --request-id=ID`). Rows are
decided on each path in turn (access/matrix.py for nodes, access/kube_matrix.py for
clusters); locks are matched as for a certificate issued now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from certgate.access.rbac import RoleSet
from certgate.api.access_request import AccessRequest
from certgate.api.lock import Lock, lock_matches
from certgate.api.role import Role, RoleConditions
from certgate.api.user import User

How = Literal["standing", "request", "locked", "denied"]
# A row's place in the matrix's order (and the paging key): user, kind (nodes first),
# resource name, login ("" for clusters).
RowKey = tuple[str, int, str, str]


@dataclass(frozen=True, kw_only=True)
class RowStatus:
    """What every row of the matrix says, node or cluster: who, and how access is held
    now or why it is refused."""

    user: str
    allowed: bool
    how: How
    request_id: str = ""
    until: datetime | None = None
    lock: str = ""
    denied_by: tuple[str, ...] = ()
    # The node's (kube service's) one-line refusal, for rows that are not allowed.
    reason: str = ""

    def status_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "how": self.how,
            "request_id": self.request_id,
            "until": self.until.isoformat() if self.until else None,
            "lock": self.lock,
            "denied_by": list(self.denied_by),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Path:
    """One way a user may hold access: standing roles, or those plus one request's."""

    roles: tuple[Role, ...]
    role_set: RoleSet
    traits: Mapping[str, Sequence[str]]
    resources: tuple[str, ...] = ()
    request: AccessRequest | None = None

    @property
    def request_ids(self) -> tuple[str, ...]:
        return (self.request.name,) if self.request else ()

    def held_by_request(self) -> dict[str, Any]:
        """A row's `request_id` and `until` when reached through this path."""
        if self.request is None:
            return {}
        return {"request_id": self.request.name, "until": self.request.spec.access_expires}

    def lock_for(
        self, user: str, locks: Sequence[Lock], now: datetime, *, node: str, login: str = ""
    ) -> Lock | None:
        """The first lock (by name) in force for a certificate of this path issued now."""
        for lock in sorted(locks, key=lambda lock: lock.name):
            if lock_matches(
                lock,
                user=user,
                roles=[r.name for r in self.roles],
                request_ids=self.request_ids,
                login=login,
                node=node,
                now=now,
                issued=now,
            ):
                return lock
        return None


def user_paths(
    user: User, roles: Mapping[str, Role], requests: Sequence[AccessRequest], now: datetime
) -> list[Path]:
    """Standing first, then each active approved request of the user (oldest first)."""
    # A role the user names that no longer exists grants nothing (login leaves it out).
    standing = tuple(roles[name] for name in user.spec.roles if name in roles)
    traits = user.spec.traits
    paths = [Path(standing, RoleSet(standing, traits), traits)]
    mine = [r for r in requests if r.spec.user == user.name and r.active_at(now)]
    mine.sort(key=lambda r: (r.spec.created, r.name))
    for request in mine:
        extra = tuple(
            roles[name]
            for name in dict.fromkeys(request.spec.roles)
            if name in roles and name not in user.spec.roles
        )
        held = (*standing, *extra)
        resources = tuple(dict.fromkeys(ref.describe() for ref in request.spec.resources))
        paths.append(Path(held, RoleSet(held, traits), traits, resources, request))
    return paths


def with_deny(role: Role, deny: RoleConditions) -> Role:
    """The role with its deny section replaced: to evaluate its allow section alone."""
    return role.model_copy(update={"spec": role.spec.model_copy(update={"deny": deny})})


def with_allow(role: Role, allow: RoleConditions) -> Role:
    """The role with its allow section replaced: to evaluate its deny section alone."""
    return role.model_copy(update={"spec": role.spec.model_copy(update={"allow": allow})})
