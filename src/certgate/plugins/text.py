"""The words every chat plugin uses about a request: one place, so Slack, Mattermost
and the docs agree."""

from __future__ import annotations

from datetime import datetime

from certgate.api.duration import format_duration
from certgate.plugins.request_info import APPROVED, DENIED, EXPIRED, RequestInfo, Review

STATUS = {
    "PENDING": "⏳ PENDING",
    APPROVED: "✅ APPROVED",
    DENIED: "❌ DENIED",
    EXPIRED: "⌛ EXPIRED",
}


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


def cut(value: str, limit: int) -> str:
    """At most `limit` characters (chats refuse a message with an overlong field)."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def status(request: RequestInfo) -> str:
    label = STATUS.get(request.state, request.state)
    return f"{label}: {request.resolve_reason}" if request.resolve_reason else label


def duration(request: RequestInfo) -> str:
    return format_duration(request.max_duration) if request.max_duration else "-"


def review_url(base: str, request: RequestInfo) -> str:
    return f"{base}/web/requests/{request.id}"


def approve_command(request: RequestInfo) -> str:
    return f"cgctl requests approve {request.id}"


def headline(request: RequestInfo) -> str:
    return f"{request.user} requests {request.what()}"


def review_line(review: Review) -> str:
    verdict = "approved" if review.verdict == "approve" else "denied"
    said = f": {review.reason}" if review.reason else ""
    return f"{review.author} {verdict} the request{said}"


def outcome_line(request: RequestInfo) -> str:
    """What the requester is told when the request is resolved."""
    head = f"Your access request {request.id} for {request.what()}"
    if request.state == APPROVED:
        ends = request.access_ends()
        until = f" until {when(ends)}" if ends else ""
        return (
            f"{head} was approved{_why(request, 'approved')}. "
            f"You have access{until}: cgsh login --request-id={request.id}"
        )
    if request.state == DENIED:
        return f"{head} was denied{_why(request, 'denied')}."
    why = f": {request.resolve_reason}" if request.resolve_reason else ""
    return f"{head} expired{why}."


def _why(request: RequestInfo, verb: str) -> str:
    # Auth says "approved by bob, carol (bob: fine)": read on from the verb.
    reason = request.resolve_reason
    if reason.startswith(verb + " "):
        return " " + reason[len(verb) + 1 :]
    return f" ({reason})" if reason else ""
