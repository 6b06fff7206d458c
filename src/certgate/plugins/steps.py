"""What to send next about a request, decided from the request and the state record
alone (no I/O, so every case is a plain unit test).

The order for one request:

    1. post      the message, to each recipient that has none yet
    2. reply     each review not yet replied, in the thread of each message
    3. update    each message that shows another state than the request's
    4. tell      the requester the outcome, once, when the request is resolved

A recipient whose message failed for good is skipped. Each step is one outbound call;
the runner saves the record after each, so the next call to `next_step` moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from certgate.plugins.request_info import RequestInfo
from certgate.plugins.state import RequestRecord

StepKind = Literal["post", "reply", "update", "tell"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    recipient: str = ""
    review: int = -1  # index into request.reviews, for a reply


def next_step(request: RequestInfo, record: RequestRecord, recipients: list[str]) -> Step | None:
    """The next thing to send about `request`, or None when everything is said."""
    if record.quiet:
        return None
    for recipient in recipients:
        if recipient not in record.messages:
            return Step("post", recipient)
    live = [(name, m) for name, m in record.messages.items() if not m.failed]
    for name, message in live:
        if message.replies < len(request.reviews):
            return Step("reply", name, message.replies)
    for name, message in live:
        if message.shows != request.state:
            return Step("update", name)
    if request.resolved and not record.requester_told:
        return Step("tell")
    return None
