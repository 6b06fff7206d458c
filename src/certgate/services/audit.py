"""The audit log: every security-relevant event, stored and appended to a JSON-lines file.

Events are JSON objects with `event` (e.g. `user.login`), `code`, `time`, `uid` and the
event's own fields. They go to the event store (searchable) and to
`<data_dir>/log/events.log` for log shippers. See docs/audit.md for every type.

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

from certgate.clock import Clock, SystemClock

log = logging.getLogger("certgate.audit")

# The most events one store transaction and one file append carry.
MAX_BATCH = 512

# Event type -> code. Codes are stable identifiers for SIEM rules; types may gain fields.
EVENT_CODES: dict[str, str] = {
    "user.create": "T1002I",
    "user.update": "T1003I",
    "user.delete": "T1004I",
    "user.invite.complete": "T1005I",
    "user.reset": "T1006I",
    "user.login": "T1000I",
    "user.login.failure": "T1000W",
    "user.login.locked": "T1001W",
    "cert.create": "TC000I",
    "cert.create.failure": "TC000W",
    "role.created": "T9000I",
    "role.deleted": "T9001I",
    "token.create": "TJT00I",
    "token.delete": "TJT01I",
    "join": "TJ001I",
    "join.failure": "TJ001E",
    "resource.created": "TR000I",
    "resource.deleted": "TR001I",
    "lock.created": "TLK00I",
    "lock.deleted": "TLK01I",
    "lock.expired": "TLK02I",
    "session.start": "T2000I",
    "session.join": "T2001I",
    "session.leave": "T2003I",
    "session.end": "T2004I",
    "session.upload": "T2005I",
    "session.rejected": "T1006W",
    "exec": "T3002I",
    "port_forward": "T3003I",
    "sftp": "TS001I",
    "kube.request": "T3009I",
}


class EventStore(Protocol):
    async def append(self, event: dict[str, Any]) -> None: ...

    async def append_many(self, events: Sequence[dict[str, Any]]) -> None:
        """All of `events` in one transaction: all stored, or none."""
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
        log_file.parent.mkdir(parents=True, exist_ok=True)

    async def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": event,
            "code": EVENT_CODES.get(event, "T0000I"),
            "time": self._clock.now().isoformat(),
            "uid": str(uuid.uuid4()),
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        await self.record(record)
        return record

    async def record(self, record: dict[str, Any]) -> None:
        """Store an event built elsewhere (a node's, a proxy's) as it is.

        Returns once the event is stored and appended to the file; raises what storing
        it raised. A caller that is cancelled meanwhile does not unwrite it.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="certgate-audit")
            self._writer.add_done_callback(_log_writer_failure)
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
            stored = [r for (r, _), error in zip(batch, outcomes, strict=True) if error is None]
            if stored:
                text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in stored)
                try:
                    # On the loop: appending a few KB to the page cache takes
                    # microseconds, less than handing it to a thread and back.
                    _append_text(self._log_file, text)
                except OSError as exc:
                    # Stored but not in the file: the caller hears of it, as before.
                    outcomes = [error or exc for error in outcomes]
            for (_, done), error in zip(batch, outcomes, strict=True):
                if done.done():
                    continue  # the caller was cancelled; its event is written anyway
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    async def _store_batch(self, records: list[dict[str, Any]]) -> list[Exception | None]:
        """Store `records` in one transaction; the error of each that failed, if any."""
        try:
            await self._store.append_many(records)
            return [None] * len(records)
        except Exception as exc:
            if len(records) == 1:
                return [exc]
        # One bad event must not fail the others: store them one by one, so each
        # caller hears about its own.
        outcomes: list[Exception | None] = []
        for record in records:
            try:
                await self._store.append(record)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


def _log_writer_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("audit writer failed", exc_info=task.exception())


def _append_text(path: Path, text: str) -> None:
    # One write() on an O_APPEND descriptor: lines from several processes (auth
    # workers) never interleave within a batch.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
