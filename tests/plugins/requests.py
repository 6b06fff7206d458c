"""Access requests as plugins see them, for unit tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from certgate.plugins.request_info import RequestInfo, Review

CREATED = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def pending(rid: str = "3f1c0d7e-0000-4000-8000-000000000001", **changes: object) -> RequestInfo:
    request = RequestInfo(
        id=rid,
        user="alice",
        state="PENDING",
        roles=("kube-admin",),
        resources=(("node", "db-1"),),
        reason="incident 42",
        suggested_reviewers=("bob",),
        created=CREATED,
        pending_expires=CREATED + timedelta(hours=1),
        max_duration=timedelta(hours=4),
    )
    return replace(request, **changes)  # type: ignore[arg-type]


def review(author: str = "bob", verdict: str = "approve", reason: str = "ok") -> Review:
    return Review(author, verdict, reason, CREATED + timedelta(minutes=5))
