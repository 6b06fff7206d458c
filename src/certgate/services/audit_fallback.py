"""Auth's own audit events the event store could not take, kept on disk until it does.

Nodes and proxies keep their events in a durable spool until auth stores them
(rpc/audit_spool.py). Auth's own events (a lock made, a certificate issued, a role
changed) go straight to the event store; when that write fails (the database
unreachable, its audit table refused, SQLite busy past its timeout) the action has
usually happened already, and the event must not be lost with the failed write.
So the audit log (services/audit.py) hands such events here:

    emit ─▶ event store ─✗─▶ hold(records): append to this process's file, fsync ─▶ emit returns
                                                  │
            event store ◀── append_many ◀── retry task (backoff with jitter, until stored;
                                                  │      at once when the store takes a write)
                                                  └─▶ file removed once all of it is stored

Auth processes (the workers of one auth) share a data directory, so each holds its own
file, created under a temporary name, locked (flock) and only then named `*.jsonl`. A
file whose lock nobody holds was left by a process that died: the next auth process to
start claims it (takes its lock) and stores it. Events keep their uid, and the store
skips a uid it has, so an event stored twice (a process that died between storing and
removing) is kept once.

An event the store refuses on its own (malformed: `BadParameter`) would be refused on
every retry: it is set aside in `refused.jsonl` with the reason and logged, so it never
holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from certgate.errors import BadParameter
from certgate.tasks import log_failure

log = logging.getLogger("certgate.audit")

RETRY_FIRST = 1.0
RETRY_MAX = 30.0
# The most events one retry stores in one transaction.
RETRY_BATCH = 512
REFUSED = "refused.jsonl"


class EventAppender(Protocol):
    async def append_many(self, events: Sequence[dict[str, Any]]) -> list[bool]: ...


@dataclass
class _HeldFile:
    path: Path
    fd: int  # open, and locked (flock) while this process holds the file
    count: int = 0  # events in it


class AuditFallback:
    """`await start()` claims files left by dead processes and stores them; `await
    hold(records)` returns once the records are on disk; `await close()` stops retrying
    and leaves what is not stored yet for the next start."""

    def __init__(
        self,
        directory: Path,
        store: EventAppender,
        *,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self._dir = directory
        self._store = store
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._active: _HeldFile | None = None  # where hold() appends
        self._waiting: list[_HeldFile] = []  # claimed or rotated files, not stored yet
        self._lock = asyncio.Lock()  # one hold() or rotation at a time on the active file
        self._retry: asyncio.Task[None] | None = None
        self._store_works = asyncio.Event()  # the store took a write: retry now

    @property
    def held(self) -> int:
        """Events on disk, not stored yet: this process's, and those it claimed."""
        files = [*self._waiting, *([self._active] if self._active else [])]
        return sum(held.count for held in files)

    async def start(self) -> None:
        claimed = await asyncio.to_thread(self._claim_orphans)
        if claimed:
            self._waiting += claimed
            log.warning(
                "audit: %d audit events left by an earlier auth process in %s; storing them now",
                self.held,
                self._dir,
            )
            self._start_retry()

    async def hold(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep `records` on disk until the store takes them; raises OSError if even
        that fails (the caller then reports the store's failure)."""
        text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
        async with self._lock:
            if self._active is None:
                self._active = await asyncio.to_thread(self._new_file)
            first = self.held == 0
            await asyncio.to_thread(_append_and_sync, self._active.fd, text.encode())
            self._active.count += len(records)
        if first:
            log.warning(
                "audit: the event store did not take auth's audit events; keeping them"
                " in %s until it does",
                self._dir,
            )
        self._start_retry()

    def store_took_events(self) -> None:
        """The store just took a write: held events are retried now, not after the
        backoff."""
        if self._retry is not None and not self._retry.done():
            self._store_works.set()

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
        async with self._lock:
            left = self.held
            files = [*self._waiting, *([self._active] if self._active else [])]
            self._waiting, self._active = [], None
        for held in files:
            os.close(held.fd)  # releases its lock: the next auth process claims it
        if left:
            log.warning(
                "audit: %d audit events not stored yet stay in %s for the next start",
                left,
                self._dir,
            )

    # ------------------------------------------------------------------ files

    def _new_file(self) -> _HeldFile:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        temporary = self._dir / f"{name}.tmp"
        # 0600: the lines name users, client addresses and command lines.
        fd = os.open(temporary, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        # Locked before it has a name another process would claim.
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self._dir / f"{name}.jsonl"
        os.rename(temporary, path)
        return _HeldFile(path, fd)

    def _claim_orphans(self) -> list[_HeldFile]:
        if not self._dir.is_dir():
            return []
        claimed = []
        for path in sorted(self._dir.glob("*.jsonl")):
            if path.name == REFUSED:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # stored and removed by its owner meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process's
                continue
            claimed.append(_HeldFile(path, fd, _count_lines(path)))
        return claimed

    # ------------------------------------------------------------------ retrying

    def _start_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_until_stored(), name="audit fallback")
            self._retry.add_done_callback(log_failure(log, "audit fallback retry"))

    async def _retry_until_stored(self) -> None:
        delay = self._retry_first
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):
                    await self._store_works.wait()
            self._store_works.clear()
            async with self._lock:
                # hold() starts a new file from here on: this one is read whole.
                if self._active is not None:
                    self._waiting.append(self._active)
                    self._active = None
            try:
                while self._waiting:
                    await self._store_file(self._waiting[0])
                    held = self._waiting.pop(0)
                    await asyncio.to_thread(_remove, held)
            except Exception as exc:
                log.warning(
                    "audit: %d audit events still not stored (%s); retrying in about %.0fs",
                    self.held,
                    exc,
                    delay,
                )
                delay = min(delay * 2, self._retry_max)
                continue
            if self._active is None:
                log.info("audit: the held audit events are stored")
                return

    async def _store_file(self, held: _HeldFile) -> None:
        # A batch at a time: a file that grew through a long outage is never in memory
        # whole.
        offset = 0
        while True:
            batch, offset = await asyncio.to_thread(
                _read_batch, held.path, offset, RETRY_BATCH, self._dir
            )
            if not batch:
                return
            try:
                await self._store.append_many(batch)
            except BadParameter:
                await self._store_one_by_one(batch)

    async def _store_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        for record in batch:
            try:
                await self._store.append_many([record])
            except BadParameter as exc:
                await asyncio.to_thread(_set_aside, self._dir, record, str(exc))
                log.error(
                    "audit: the event store refused audit event %s (%s): set aside in %s",
                    record.get("uid"),
                    exc,
                    self._dir / REFUSED,
                )


def _count_lines(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError), path.open("rb") as lines:
        return sum(1 for line in lines if line.endswith(b"\n"))
    return 0


def _append_and_sync(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


def _read_batch(
    path: Path, offset: int, most: int, directory: Path
) -> tuple[list[dict[str, Any]], int]:
    """Up to `most` events from the whole lines of a held file from `offset`, and the
    offset after them. A torn last line (a process killed mid-write, before its fsync
    returned and so before its emit returned) is left out; a line that is not JSON is
    set aside."""
    records: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError), path.open("rb") as lines:
        lines.seek(offset)
        while len(records) < most:
            line = lines.readline()
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                _set_aside(directory, {"line": line.decode(errors="replace")}, str(exc))
    return records, offset


def _remove(held: _HeldFile) -> None:
    with contextlib.suppress(FileNotFoundError):
        held.path.unlink()
    os.close(held.fd)


def _set_aside(directory: Path, record: dict[str, Any], reason: str) -> None:
    line = json.dumps({"reason": reason, "event": record}, sort_keys=True) + "\n"
    fd = os.open(directory / REFUSED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        _append_and_sync(fd, line.encode())
    finally:
        os.close(fd)
