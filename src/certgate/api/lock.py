"""Locks: cut an identity (user, role, login, node, ...) off, now and until expiry."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from certgate.api.meta import Metadata, Model


class LockTarget(Model):
    user: str = ""
    role: str = ""
    login: str = ""
    node: str = ""
    access_request: str = ""
    mfa_device: str = ""
    # With `user` only: the lock covers just that user's certificates whose validity
    # starts (SSH valid_after, X.509 notBefore) before this moment — the ones issued
    # before the user was deleted, reset or lost a role. Newer ones are not locked.
    issued_before: datetime | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> LockTarget:
        set_fields = [name for name, value in self if value and name != "issued_before"]
        if len(set_fields) != 1:
            raise ValueError(
                "exactly one of user, role, login, node, access_request, mfa_device must be set"
            )
        if self.issued_before is not None:
            if not self.user:
                raise ValueError("issued_before goes with a user target only")
            if self.issued_before.tzinfo is None:
                raise ValueError("issued_before must carry a time zone")
        return self

    def describe(self) -> str:
        for name, value in self:
            if value and name != "issued_before":
                if self.issued_before is not None:
                    return f"{name}={value} (certificates issued before {self.issued_before})"
                return f"{name}={value}"
        return ""


class LockSpec(Model):
    target: LockTarget
    message: str = ""
    created_by: str = ""
    created: datetime | None = None


class Lock(Model):
    kind: Literal["lock"] = "lock"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: LockSpec = Field()

    @property
    def name(self) -> str:
        return self.metadata.name


def lock_matches(
    lock: Lock,
    *,
    user: str,
    roles: tuple[str, ...] | list[str],
    request_ids: tuple[str, ...] | list[str] = (),
    login: str = "",
    node: str = "",
    now: datetime,
    issued: datetime | None = None,
) -> bool:
    """Whether `lock` is in force for this identity (and login and node, where known).

    Targets match exactly: a user lock names a user name, a role lock any of the
    identity's roles, and so on. An expired lock matches nothing. A user lock with
    `issued_before` matches only certificates issued (`issued`: their valid_after /
    notBefore) before it; when the issue time is not known it matches (fail closed).
    """
    if lock.metadata.expires is not None and lock.metadata.expires <= now:
        return False
    target = lock.spec.target
    if target.issued_before is not None:
        return target.user == user and (issued is None or issued < target.issued_before)
    return bool(
        (target.user and target.user == user)
        or (target.role and target.role in roles)
        or (target.access_request and target.access_request in request_ids)
        or (target.login and login and target.login == login)
        or (target.node and node and target.node == node)
    )


def lock_message(lock: Lock) -> str:
    return f"access denied: locked: {lock.spec.message or 'by an administrator'}"
