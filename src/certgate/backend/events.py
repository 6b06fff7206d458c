"""The audit event store seam: append audit events, search them by time and filters.

Implementations: `SQLiteEventStore` (events_sqlite.py, the single-host default) and
`PostgresEventStore` (events_postgres.py, one log for every auth process). Both pass
the suite in tests/backend/events_suite.py; `registry.open_event_store` picks one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from certgate.errors import BadParameter

# The most events one search page answers.
MAX_LIMIT = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class EventStore(Protocol):
    """Events are JSON objects with non-empty string `event`, `code`, `time` (RFC 3339
    with a timezone) and `uid`; optional string `user` and `node`; any other fields.

    - append / append_many: store events (all of a batch or none); an event whose uid
      is stored already is skipped (kept as it was), so an emitter may retry.
      append_many says for each event whether it was stored now (False: skipped).
      BadParameter for a malformed event.
    - search: one page of events with since <= time < until matching every filter
      given, newest first ("desc") or oldest first ("asc"), ties in append order, and
      the cursor of the next page (None on the last). Pages never skip or repeat an
      event, even while events are appended.
    """

    async def append(self, event: Mapping[str, Any]) -> None: ...

    async def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[bool]: ...

    async def search(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        event_types: Sequence[str] = (),
        user: str | None = None,
        node: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: str = "desc",
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def close(self) -> None: ...


# -- shared by the implementations -------------------------------------------------


def check_search(order: str, event_types: Sequence[str], limit: int) -> None:
    """`search`'s order, types and limit checked: BadParameter naming what is wrong."""
    if order not in ("desc", "asc"):
        raise BadParameter(f'order must be "desc" or "asc", got {order!r}')
    if isinstance(event_types, str):
        raise BadParameter("event_types takes a list of event types, not one string")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadParameter(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


def event_row(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """A checked event as (time in microseconds, event, code, uid, user, node, JSON)."""
    for field in ("event", "code", "time", "uid"):
        if not isinstance(event.get(field), str) or not event[field]:
            raise BadParameter(f'audit event needs a non-empty string "{field}"')
    for field in ("user", "node"):
        if event.get(field) is not None and not isinstance(event[field], str):
            raise BadParameter(f'audit event "{field}" must be a string')
    try:
        moment = datetime.fromisoformat(event["time"])
    except ValueError as exc:
        raise BadParameter(f"audit event time {event['time']!r} is not RFC 3339") from exc
    try:
        data = json.dumps(event, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise BadParameter(f"audit event {event['uid']} is not JSON: {exc}") from exc
    return (
        to_micros(moment, "audit event time"),
        event["event"],
        event["code"],
        event["uid"],
        event.get("user"),
        event.get("node"),
        data,
    )


def to_micros(moment: datetime, what: str) -> int:
    if moment.tzinfo is None:
        raise BadParameter(f"{what} must carry a timezone, got {moment.isoformat()}")
    return (moment - _EPOCH) // _MICROSECOND


def encode_cursor(time: int, row_id: int, order: str) -> str:
    """The opaque cursor of a search page: its order and the (time, id) of its last row."""
    raw = json.dumps([order, time, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_order, time, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadParameter("search cursor is malformed: start again without one") from exc
    if cursor_order != order or not isinstance(time, int) or not isinstance(row_id, int):
        raise BadParameter(f"search cursor was not made by an {order!r}-order search")
    # The stores compare them as 64-bit integers: beyond that is no cursor they made.
    if not (-(2**63) <= time < 2**63 and 0 <= row_id < 2**63):
        raise BadParameter("search cursor is malformed: start again without one")
    return time, row_id
