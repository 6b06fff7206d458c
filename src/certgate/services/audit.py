"""The audit log: every security-relevant event, stored and appended to a JSON-lines file.

Events are JSON objects with `event` (e.g. `user.login`), `code`, `time`, `uid` and the
event's own fields. They go to the event store (searchable) and to
`<data_dir>/log/events.log` for log shippers. See docs/audit.md for every type.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from certgate.clock import Clock, SystemClock

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
    "session.end": "T2004I",
    "session.rejected": "T1006W",
    "exec": "T3002I",
    "port_forward": "T3003I",
    "sftp": "TS001I",
}


class EventStore(Protocol):
    async def append(self, event: dict[str, Any]) -> None: ...

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
        self._file_lock = asyncio.Lock()
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
        """Store an event built elsewhere (a node's, a proxy's) as it is."""
        await self._store.append(record)
        line = json.dumps(record, sort_keys=True) + "\n"
        async with self._file_lock:
            await asyncio.to_thread(_append_line, self._log_file, line)

    async def search(self, **query: Any) -> tuple[list[dict[str, Any]], str | None]:
        return await self._store.search(**query)


def _append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line)
