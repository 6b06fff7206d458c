"""Join tokens: one-time secrets that let a host join the cluster in a given role."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from certgate.api.meta import Metadata, Model

JoinRole = Literal["node", "kube", "proxy", "bot"]


class TokenSpec(Model):
    roles: list[JoinRole] = Field(min_length=1)
    created_by: str = ""


class Token(Model):
    """metadata.name is the secret itself; metadata.expires is when it stops working."""

    kind: Literal["token"] = "token"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: TokenSpec

    @property
    def name(self) -> str:
        return self.metadata.name
