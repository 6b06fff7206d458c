"""The audit log: every security-relevant event, stored and appended to a JSON-lines file.

Events are JSON objects with `event` (e.g. `user.login`), `code`, `time`, `uid` and the
event's own fields. They go to the event store (searchable) and to
`<data_dir>/log/events.log` for log shippers. Every type is declared in the catalogue
(api/events.py, listed in docs/audit.md); every event is cut to the size caps
(api/event_caps.py) before it is stored, auth's own as well as the services'.

Writes are group commits: `emit` returns only once its event is stored and in the
file, but events emitted while a write is under way wait for the next one and go
together, one store transaction and one file append for the lot:

    emit ─┐                 ┌─ append_many([e1..en]) ─ one write() of n lines ─┐
    emit ─┼─> pending ──────┤                                                  ├─> each emit returns
    emit ─┘   (while the    └──────────────────────────────────────────────────┘
              last batch is written)

So a busy auth server issuing certificates is never queued behind one event at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from certgate.api.event_caps import capped
from certgate.api.events import code_of
from certgate.clock import Clock, SystemClock
from certgate.services.settle import settle
from certgate.tasks import log_failure

log = logging.getLogger("certgate.audit")

# The most events one store transaction and one file append carry.
MAX_BATCH = 512


class EventStore(Protocol):
    async def append(self, event: dict[str, Any]) -> None: ...

    async def append_many(self, events: Sequence[dict[str, Any]]) -> list[bool]:
        """All of `events` in one transaction: all stored, or none. For each, whether
        it is new (False: an event with its uid was stored before, and is kept as it was)."""
        ...

    async def search(
        self,
        since: datetime | None,
        until: datetime | None,
        event_types: Sequence[str] = (),
        user: str | None = None,
        node: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: str = "desc",
    ) -> tuple[list[dict[str, Any]], str | None]: ...


class AuditLog:
    def __init__(self, store: EventStore, log_file: Path, clock: Clock | None = None) -> None:
        self._store = store
        self._log_file = log_file
        self._clock = clock or SystemClock()
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": event,
            "code": code_of(event),
            "time": self._clock.now().isoformat(),
            "uid": str(uuid.uuid4()),
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        await self.record(record)
        return record

    async def record(self, record: dict[str, Any]) -> None:
        """Store an event built elsewhere (a node's, a proxy's), cut to the size caps
        (api/event_caps.py). An event whose uid is already stored is not stored again.

        Returns once the event is stored and appended to the file; raises what storing
        it raised. A caller that is cancelled meanwhile does not unwrite it.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((capped(record), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="certgate-audit")
            self._writer.add_done_callback(log_failure(log, "audit writer"))
        await done

    async def close(self) -> None:
        """Wait for the events already emitted to be written."""
        if self._writer is not None:
            await asyncio.wait([self._writer])

    async def search(self, **query: Any) -> tuple[list[dict[str, Any]], str | None]:
        return await self._store.search(**query)

    async def _write_pending(self) -> None:
        """Write batches until nothing is pending; one writer task at a time."""
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            outcomes = await self._store_batch([record for record, _ in batch])
            # New ones only: a retried event is in the file already.
            stored = [r for (r, _), outcome in zip(batch, outcomes, strict=True) if outcome is True]
            if stored:
                text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in stored)
                try:
                    # On the loop: appending a few KB to the page cache takes
                    # microseconds, less than handing it to a thread and back.
                    _append_text(self._log_file, text)
                except OSError as exc:
                    # Stored but not in the file: the caller hears of it, as before.
                    outcomes = [o if isinstance(o, Exception) else exc for o in outcomes]
            results = [o if isinstance(o, Exception) else None for o in outcomes]
            settle((done for _, done in batch), results)

    async def _store_batch(self, records: list[dict[str, Any]]) -> list[Exception | bool]:
        """Store `records` in one transaction; for each, whether it was new, or the
        error that kept it out."""
        try:
            return list(await self._store.append_many(records))
        except Exception as exc:
            if len(records) == 1:
                return [exc]
        # One bad event must not fail the others: store them one by one, so each
        # caller hears about its own.
        outcomes: list[Exception | bool] = []
        for record in records:
            try:
                outcomes.extend(await self._store.append_many([record]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


def _append_text(path: Path, text: str) -> None:
    # One write() on an O_APPEND descriptor: lines from several processes (auth
    # workers) never interleave within a batch.
    # 0600: the lines name users, client addresses and command lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
