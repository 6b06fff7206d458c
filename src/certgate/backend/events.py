"""The audit event store seam: append audit events, search them by time and filters.

Implementations: `SQLiteEventStore` (events_sqlite.py, the single-host default) and
`PostgresEventStore` (events_postgres.py, one log for every auth process). Both pass
the suite in tests/backend/events_suite.py; `registry.open_event_store` picks one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

# The most events one search page answers.
MAX_LIMIT = 10_000


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
