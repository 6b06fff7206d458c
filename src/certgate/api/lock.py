"""Locks: cut an identity (user, role, login, node, ...) off, now and until expiry."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from certgate.api.meta import Metadata, Model
from certgate.api.names import OptionalName, Time


class LockTarget(Model):
    user: OptionalName = ""
    role: OptionalName = ""
    login: OptionalName = ""
    node: OptionalName = ""
    access_request: OptionalName = ""
    mfa_device: OptionalName = ""

    @model_validator(mode="after")
    def _exactly_one(self) -> LockTarget:
        set_fields = [name for name, value in self if value]
        if len(set_fields) != 1:
            raise ValueError(
                "exactly one of user, role, login, node, access_request, mfa_device must be set"
            )
        return self

    def describe(self) -> str:
        for name, value in self:
            if value:
                return f"{name}={value}"
        return ""


class LockSpec(Model):
    target: LockTarget
    message: str = ""
    created_by: str = ""
    created: Time | None = None


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
) -> bool:
    """Whether `lock` is in force for this identity (and login and node, where known).

    Targets match exactly: a user lock names a user name, a role lock any of the
    identity's roles, and so on. An expired lock matches nothing.
    """
    if lock.metadata.expires is not None and lock.metadata.expires <= now:
        return False
    target = lock.spec.target
    return bool(
        (target.user and target.user == user)
        or (target.role and target.role in roles)
        or (target.access_request and target.access_request in request_ids)
        or (target.login and login and target.login == login)
        or (target.node and node and target.node == node)
    )


def lock_message(lock: Lock) -> str:
    return f"access denied: locked: {lock.spec.message or 'by an administrator'}"
