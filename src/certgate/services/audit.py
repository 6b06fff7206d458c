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

An append the disk refuses is kept and made once it has room (services/audit_file.py).

An event auth emits itself that the store cannot take (unreachable, refusing the table)
is kept on disk by services/audit_fallback.py and stored once the store takes it: the
action it records has usually happened already, so the event must not go with the
failed write. `emit` returns once it is on disk, and it is in the file at once. An
event a node or proxy sent (`record`) is not held: its sender keeps it and retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from certgate.api.event_caps import capped
from certgate.api.events import code_of
from certgate.clock import Clock, SystemClock
from certgate.errors import BadParameter
from certgate.services.audit_fallback import AuditFallback
from certgate.services.audit_file import AuditFile
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
    def __init__(
        self,
        store: EventStore,
        log_file: Path,
        clock: Clock | None = None,
        *,
        fallback: AuditFallback | None = None,
    ) -> None:
        """`fallback`: where auth's own events wait while the store cannot take them;
        without one, `emit` raises what the store raised."""
        self._store = store
        self._file = AuditFile(log_file)
        self._clock = clock or SystemClock()
        self._fallback = fallback
        # (record, its waiter, whether it may be held in the fallback)
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None], bool]] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        """Auth's own events on disk that the store has not taken yet."""
        return self._fallback.held if self._fallback else 0

    async def start(self) -> None:
        """Store what an auth process that died left in the fallback."""
        if self._fallback is not None:
            await self._fallback.start()

    async def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": event,
            "code": code_of(event),
            "time": self._clock.now().isoformat(),
            "uid": str(uuid.uuid4()),
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        await self._write(record, may_hold=True)
        return record

    async def record(self, record: dict[str, Any]) -> None:
        """Store an event built elsewhere (a node's, a proxy's), cut to the size caps
        (api/event_caps.py). An event whose uid is already stored is not stored again.

        Returns once the event is stored and appended to the file; raises what storing
        it raised (its sender keeps it and tries again). A caller that is cancelled
        meanwhile does not unwrite it.
        """
        await self._write(record, may_hold=False)

    async def _write(self, record: dict[str, Any], *, may_hold: bool) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((capped(record), done, may_hold))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="certgate-audit")
            self._writer.add_done_callback(log_failure(log, "audit writer"))
        await done

    async def close(self) -> None:
        """Wait for the events already emitted to be written (or held); stop retrying
        held ones, which the next start stores."""
        if self._writer is not None:
            await asyncio.wait([self._writer])
        if self._fallback is not None:
            await self._fallback.close()
        await self._file.close()

    async def search(self, **query: Any) -> tuple[list[dict[str, Any]], str | None]:
        return await self._store.search(**query)

    async def _write_pending(self) -> None:
        """Write batches until nothing is pending; one writer task at a time."""
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            outcomes = await self._store_batch([record for record, _, _ in batch])
            if self._fallback is not None and not all(isinstance(o, Exception) for o in outcomes):
                self._fallback.store_took_events()
            await self._hold_unstored(batch, outcomes)
            # New ones only: a retried event is in the file already.
            stored = [
                r for (r, _, _), outcome in zip(batch, outcomes, strict=True) if outcome is True
            ]
            if stored:
                text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in stored)
                # On the loop: appending a few KB to the page cache takes microseconds,
                # less than handing it to a thread and back.
                if (error := self._file.append(text)) is not None:
                    # Stored, and kept for the file until it has room: the caller hears
                    # of it, as before.
                    outcomes = [o if isinstance(o, Exception) else error for o in outcomes]
            results = [o if isinstance(o, Exception) else None for o in outcomes]
            settle((done for _, done, _ in batch), results)

    async def _hold_unstored(
        self,
        batch: list[tuple[dict[str, Any], asyncio.Future[None], bool]],
        outcomes: list[Exception | bool],
    ) -> None:
        """Hand auth's own events the store could not take to the fallback; those it
        keeps count as written (True in `outcomes`)."""
        if self._fallback is None:
            return
        unstored = [
            index
            for index, ((_, _, may_hold), outcome) in enumerate(zip(batch, outcomes, strict=True))
            if may_hold and isinstance(outcome, Exception) and not isinstance(outcome, BadParameter)
        ]
        if not unstored:
            return
        try:
            await self._fallback.hold([batch[index][0] for index in unstored])
        except OSError as exc:
            log.error("audit: cannot keep audit events the store did not take: %s", exc)
            return  # their callers hear the store's error
        for index in unstored:
            outcomes[index] = True

    async def _store_batch(self, records: list[dict[str, Any]]) -> list[Exception | bool]:
        """Store `records` in one transaction; for each, whether it was new, or the
        error that kept it out."""
        try:
            return list(await self._store.append_many(records))
        except BadParameter as exc:
            if len(records) == 1:
                return [exc]
        except Exception as exc:
            # The store itself failed (unreachable, busy): one by one would only wait
            # for the same failure once per event.
            return [exc] * len(records)
        # One bad event must not fail the others: store them one by one, so each
        # caller hears about its own.
        outcomes: list[Exception | bool] = []
        for record in records:
            try:
                outcomes.extend(await self._store.append_many([record]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
