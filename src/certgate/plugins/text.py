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
    why = f" ({request.resolve_reason})" if request.resolve_reason else ""
    if request.state == APPROVED:
        until = f" until {when(request.access_ends())}" if request.access_ends() else ""
        return (
            f"Your access request {request.id} for {request.what()} was approved{why}. "
            f"You have access{until}: cgsh login --request-id={request.id}"
        )
    if request.state == DENIED:
        return f"Your access request {request.id} for {request.what()} was denied{why}."
    return f"Your access request {request.id} for {request.what()} expired{why}."
