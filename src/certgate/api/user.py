"""The user resource. Secrets (password hash, TOTP) are stored apart and never shown."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from certgate.api.meta import Metadata, Model
from certgate.api.names import ResourceName, Text, Time

# Traits certgate itself fills from `cgctl users add` flags; roles read them as
# `{{internal.NAME}}`.
INTERNAL_TRAITS = ("logins", "kubernetes_groups", "kubernetes_users")


class UserStatus(Model):
    # Set after too many failed logins in a row; logins are refused until then.
    locked_until: Time | None = None
    failed_logins: int = 0
    # False until the invite is completed (password and TOTP set).
    active: bool = False


class UserSpec(Model):
    roles: list[ResourceName] = Field(default_factory=list)
    traits: dict[str, list[Text]] = Field(default_factory=dict)
    created_by: str = ""
    created: Time | None = None


class User(Model):
    kind: Literal["user"] = "user"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: UserSpec = Field(default_factory=UserSpec)
    status: UserStatus = Field(default_factory=UserStatus)

    @property
    def name(self) -> str:
        return self.metadata.name
