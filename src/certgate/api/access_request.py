"""Access requests: a user asks for more access (roles, or named resources) for a while.

    PENDING ──(a threshold's approvals met)──> APPROVED  (access until access_expires)
       │   ──(a threshold's denials met)────> DENIED
       └───(pending_expires passed)─────────> EXPIRED

`metadata.name` is the request id (a uuid4 string). Only PENDING changes state; the
other three are final. Reviews are kept in order, one per reviewer.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from certgate.api.duration import Duration
from certgate.api.meta import Metadata, Model
from certgate.api.role import Threshold

RequestState = Literal["PENDING", "APPROVED", "DENIED", "EXPIRED"]
Verdict = Literal["approve", "deny"]

FINAL_STATES: tuple[RequestState, ...] = ("APPROVED", "DENIED", "EXPIRED")

# Kinds of resource a request may name (`--resource=node/NAME`).
RESOURCE_KINDS = ("node",)
# Reviewers a requester may suggest (`--reviewers`): each one is a certgate user whom
# chat plugins may message directly, so the requester never names a crowd.
MAX_SUGGESTED_REVIEWERS = 10


class ResourceRef(Model):
    kind: Literal["node", "kube_cluster"]
    name: str = Field(min_length=1, max_length=253)

    def describe(self) -> str:
        return f"{self.kind}/{self.name}"


class Review(Model):
    author: str
    verdict: Verdict
    reason: str = ""
    created: datetime


class AccessRequestSpec(Model):
    user: str = Field(min_length=1)
    roles: list[str] = Field(default_factory=list)
    resources: list[ResourceRef] = Field(default_factory=list)
    reason: str = ""
    suggested_reviewers: list[str] = Field(default_factory=list)
    state: RequestState = "PENDING"
    created: datetime
    pending_expires: datetime
    max_duration: Duration | None = None
    access_expires: datetime | None = None
    thresholds: list[Threshold] = Field(default_factory=lambda: [Threshold()])
    reviews: list[Review] = Field(default_factory=list)
    resolve_reason: str = ""

    @field_validator("reason", "resolve_reason")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if len(value) > 4096:
            raise ValueError("must be at most 4096 characters")
        return value

    @model_validator(mode="after")
    def _asks_for_something(self) -> AccessRequestSpec:
        if not self.roles:
            raise ValueError("a request names at least one role")
        if self.max_duration is not None and self.max_duration <= timedelta(0):
            raise ValueError("max_duration must be longer than 0s")
        return self


class AccessRequest(Model):
    kind: Literal["access_request"] = "access_request"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: AccessRequestSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def state(self) -> RequestState:
        return self.spec.state

    def is_final(self) -> bool:
        return self.spec.state in FINAL_STATES

    def review_by(self, author: str) -> Review | None:
        return next((r for r in self.spec.reviews if r.author == author), None)

    def active_at(self, now: datetime) -> bool:
        """Whether the access it grants holds at `now`."""
        return (
            self.spec.state == "APPROVED"
            and self.spec.access_expires is not None
            and now < self.spec.access_expires
        )


def new_request_id() -> str:
    return str(uuid.uuid4())
