"""The seam between the plugin loop and a chat or webhook: `Notifier`.

The loop (base.py) names no implementation; `registry.py` picks one by name. Each
method is one outbound step (steps.py) and either succeeds, raises `RecipientRefused`
(this recipient will never work: skip it for good), or raises `ConnectionProblem`
(try the step again later; `RateLimited`: not before the chat's window ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from certgate.errors import BadParameter, ConnectionProblem
from certgate.plugins.request_info import RequestInfo


class RecipientRefused(BadParameter):
    """The chat refused this recipient or message for good (unknown channel, no such user)."""


class OutcomeUnknown(ConnectionProblem):
    """A post was sent but its answer was lost (no answer in time, a cut connection, a
    5xx): the chat may have taken it. Tried again later, like any ConnectionProblem."""


class RateLimited(ConnectionProblem):
    """The chat asked us to wait `retry_after` seconds (a 429's Retry-After) before any
    call: the loop waits at least that long before its next step."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Posted:
    ref: dict[str, Any]  # what later calls need to find the message again (JSON-safe)
    shows: str  # the request state the posted message shows


class Notifier(Protocol):
    def recipients(self, request: RequestInfo) -> list[str]:
        """Where messages about this request go (stable for a given request)."""
        ...

    async def post(self, recipient: str, request: RequestInfo) -> Posted:
        """The first message about a request, to one recipient."""
        ...

    async def reply(
        self, recipient: str, ref: dict[str, Any], request: RequestInfo, index: int
    ) -> None:
        """Review number `index` of the request, in the thread of the message at `ref`."""
        ...

    async def update(self, recipient: str, ref: dict[str, Any], request: RequestInfo) -> None:
        """Make the message at `ref` show the request's current state."""
        ...

    async def tell_requester(self, request: RequestInfo) -> None:
        """The outcome, to the user who asked (when the request is resolved)."""
        ...

    async def close(self) -> None: ...
