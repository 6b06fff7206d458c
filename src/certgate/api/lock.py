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
    created: datetime | None = None


class Lock(Model):
    kind: Literal["lock"] = "lock"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: LockSpec = Field()

    @property
    def name(self) -> str:
        return self.metadata.name
