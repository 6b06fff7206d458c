"""Join tokens: secrets that let a host join the cluster in a given role.

A token works until it expires; `uses` limits how many joins it allows (each join
takes one; the token is deleted when none are left), `name` binds it to the one host
name it may join as.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from certgate.api.meta import Metadata, Model

JoinRole = Literal["node", "kube", "proxy", "bot"]


class TokenSpec(Model):
    roles: list[JoinRole] = Field(min_length=1)
    created_by: str = ""
    uses: int | None = Field(default=None, ge=1)  # joins left; None: any number
    name: str = ""  # the only host name it joins; "": any free name


class Token(Model):
    """metadata.name is the secret itself; metadata.expires is when it stops working."""

    kind: Literal["token"] = "token"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: TokenSpec

    @property
    def name(self) -> str:
        return self.metadata.name
