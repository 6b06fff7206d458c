"""The authorizer decides on the user as stored now, not on the certificate's say-so."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from certgate.api.identity import Identity
from certgate.api.lock import Lock, LockSpec, LockTarget, lock_matches
from certgate.api.meta import Metadata
from certgate.api.role import Role, RoleConditions, RoleSpec, Rule
from certgate.api.user import User, UserSpec
from certgate.auth.permissions import Authorizer
from certgate.errors import AccessDenied, NotFound

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ROLES = {
    "access": Role(metadata=Metadata(name="access")),
    "editor": Role(
        metadata=Metadata(name="editor"),
        spec=RoleSpec(allow=RoleConditions(rules=[Rule(resources=["*"], verbs=["*"])])),
    ),
}
USERS = {"demoted": ["access"], "admin": ["access", "editor"]}


async def load_roles(names: list[str]) -> list[Role]:
    return [ROLES[name] for name in names]


async def load_user(name: str, likely: Sequence[str]) -> tuple[User, list[Role]]:
    if name not in USERS:
        raise NotFound(f'user "{name}" no longer exists')
    user = User(metadata=Metadata(name=name), spec=UserSpec(roles=USERS[name]))
    return user, [ROLES[role] for role in USERS[name]]


def check(name: str, resource: str = "user", verb: str = "create") -> Identity:
    caller = Identity(username=name, roles=("access", "editor"), expires=NOW + timedelta(hours=1))
    authorizer = Authorizer(load_roles, load_user=load_user)
    return asyncio.run(authorizer.check(caller, resource, verb))


def test_the_roles_a_user_still_holds_decide() -> None:
    assert check("admin").roles == ("access", "editor")  # would be allowed
    with pytest.raises(AccessDenied, match='do not allow "create" on "user"'):
        check("demoted")
    assert check("demoted", "self", "read").roles == ("access",)


def test_a_deleted_user_is_refused_even_for_its_own_profile() -> None:
    with pytest.raises(AccessDenied, match='user "gone" no longer exists'):
        check("gone", "self", "read")


def test_a_cut_lock_catches_older_certificates_only() -> None:
    cut = NOW - timedelta(minutes=1)
    lock = Lock(
        metadata=Metadata(name="certs-of-alice"),
        spec=LockSpec(target=LockTarget(user="alice", issued_before=cut)),
    )

    def matches(user: str, issued: datetime | None) -> bool:
        return lock_matches(lock, user=user, roles=(), now=NOW, issued=issued)

    assert matches("alice", cut - timedelta(seconds=1))
    assert not matches("alice", cut)
    assert not matches("bob", cut - timedelta(seconds=1))
    assert matches("alice", None)  # issue time unknown: locked (fail closed)
    with pytest.raises(ValueError, match="user target only"):
        LockTarget(role="dev", issued_before=cut)
