"""The durable audit spool of a node or proxy: events stay on disk until auth stored them.

    session ─ put(event, fields) ─▶ record in memory ─▶ writer task: encode, write, fsync ─┐
              (no I/O, no encoding)                      (in a thread: every record put    │
                                                          since the last write, at once)   ▼
    auth ◀── POST /v1/events, up to 500 events / 512 KiB ◀── sender task ◀── what was just
         ──▶ 204: the cursor moves on; a segment wholly        (paced)      fsynced, from
             acknowledged is deleted                                        memory; else the
                                                                            segment files

Only what is fsynced is sent, so an event auth acknowledged is one the spool could not
have lost; between `put` and the next fsync (one group commit, usually well under a
millisecond of disk time) a `kill -9` can still lose events, as the session recorder can
(recording/rawlog.py). What the writer just fsynced also goes to the sender from memory
(each record as it was encoded), so the usual path never reads back its own writes. The
files stay the record: what the memory copy does not cover (an earlier run's events, a
backlog beyond `FRESH_EVENTS` while auth was away) is read from them, and after a failed
call the sender goes back to them. After a restart the sender starts again from the
cursor, so whatever auth had not acknowledged is sent (the cursor is saved at most every
`CURSOR_SECONDS`: up to that much is sent again). Each line carries an id made when it
was put; auth derives the stored uid from it and the sender's name, and stores an id
once, so a batch resent after a lost answer (or a lost cursor) is never stored twice.

With `min_interval` (nodes and kube services: `DELIVERY_INTERVAL` in srv/host.py) the
sender starts a call at most that often: while a service is busy, one call carries
everything put since the previous one, not a call per event, and an event reaches auth
up to that much later. The first event after a quiet spell goes at once; sessions never
wait for any of it.

One batch is in flight at a time, in file order: events reach auth in the order they
were put. While auth is away the sender retries with exponential backoff and jitter; the
spool grows on disk meanwhile, not in memory. A batch auth refuses as a whole (a bad
event in it) is sent again one event at a time, and what auth refuses then is set aside
in `refused.jsonl` with the reason, so one bad event never blocks the others.

Files in the spool directory:

    000000000001.jsonl …  segments, oldest first; a line: {"id", "event", "time", "fields"}
    cursor                "<segment> <offset>": acknowledged up to there (written at most
                          every CURSOR_SECONDS and without fsync: after a crash a little is
                          resent, and auth keeps it once)
    refused.jsonl         events auth refused one by one, each with its reason
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certgate.api.event_caps import MAX_EVENT_BYTES, capped
from certgate.clock import Clock, SystemClock
from certgate.errors import AccessDenied, BadParameter

log = logging.getLogger("certgate.audit")

# [event record, ...] -> stored by auth, in order (raises otherwise)
BatchSender = Callable[[list[dict[str, Any]]], Awaitable[None]]

SEGMENT_BYTES = 4 * 1024 * 1024
BATCH_EVENTS = 500
BATCH_BYTES = 512 * 1024  # auth takes request bodies up to 1 MiB
SEND_TIMEOUT = 15.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
CLOSE_TIMEOUT = 10.0
# How often the acknowledged position is saved: a crash resends at most this much.
CURSOR_SECONDS = 1.0
# Written records the sender may take from memory; beyond that (auth away) it reads the
# files, so a backlog grows on disk, not in memory.
FRESH_EVENTS = 2 * BATCH_EVENTS

_SEGMENT = re.compile(r"(\d{12})\.jsonl")
# Answers that will not change on a retry: auth refused the call, or it could not even
# be encoded (a NaN in a field).
_REFUSED = (BadParameter, AccessDenied, ValueError, TypeError)


@dataclass
class _Fresh:
    """A record the writer just made durable, as it was encoded, and where its line is."""

    seq: int  # its segment
    start: int  # its line's offset in the segment
    end: int  # just past its line
    record: dict[str, Any]


@dataclass
class _Segment:
    seq: int
    path: Path
    end: int  # bytes durable on disk (whole lines)
    fd: int | None = None  # open for appending while it is the active segment


class AuditSpool:
    """An AuditWriter (srv/audit_queue.py) that keeps events on disk until delivered.

    `await start()` recovers what an earlier run left and starts delivering; `put` takes
    events (also before start); `await close()` writes what was put, delivers for at most
    `CLOSE_TIMEOUT` while auth answers, and stops; the rest goes on the next start.
    """

    def __init__(
        self,
        directory: Path,
        send: BatchSender,
        name: str = "audit spool",
        clock: Clock | None = None,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        min_interval: float = 0.0,
    ) -> None:
        """`min_interval`: the least time between the starts of two calls to auth."""
        self._dir = directory
        self._send = send
        self._name = name
        self._clock = clock or SystemClock()
        self._segment_bytes = segment_bytes
        self._buffer: list[dict[str, Any]] = []  # records put, not yet on disk
        self._segments: list[_Segment] = []
        self._offset = 0  # acknowledged bytes of self._segments[0]
        self._fresh: deque[_Fresh] = deque()  # written, in file order, maybe not yet sent
        self._min_interval = min_interval
        self._last_call = -min_interval  # loop time the last call to auth started
        self._cursor_saved = (0, 0)  # what the cursor file says
        self._cursor_time = -CURSOR_SECONDS  # loop time it was last written
        self._writing = False
        self._in_write = 0  # records the writer took from the buffer, not yet on disk
        self._failing = False
        self._closed = False
        self._wake_writer = asyncio.Event()
        self._wake_sender = asyncio.Event()
        self._changed = asyncio.Event()  # for close(): something was written or sent
        self._tasks: list[asyncio.Task[None]] = []
        self.delivered = 0  # events auth acknowledged (benchmarks, diagnostics)
        # Event ids: random per run, then counted (a uuid4 each costs a syscall).
        self._run_id = uuid.uuid4().hex
        self._sequence = itertools.count()

    # ------------------------------------------------------------------ the writer side

    def put(self, event: str, fields: dict[str, Any]) -> None:
        # Encoding waits for the writer's thread: a session pays for a dict and a clock.
        record = {
            "id": f"{self._run_id}.{next(self._sequence)}",
            "event": event,
            "time": self._clock.now().isoformat(),
            "fields": dict(fields),  # the caller's dict may change after this
        }
        if self._closed:
            # A session that ended while the server was closing: written at once.
            self._write_now([record])
            return
        self._buffer.append(record)
        self._wake_writer.set()

    @property
    def backlog(self) -> int:
        """Bytes on disk auth has not acknowledged, plus events not on disk yet: 0 when
        everything put has been delivered."""
        on_disk = sum(s.end for s in self._segments) - self._offset
        return on_disk + len(self._buffer) + self._in_write

    async def start(self) -> None:
        await asyncio.to_thread(self._recover)
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"{self._name} writer"),
            asyncio.create_task(self._sender(), name=f"{self._name} sender"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)
        if self._segments[0].end > self._offset or len(self._segments) > 1:
            log.info(
                "%s: %d bytes of audit events left from the last run", self._name, self.backlog
            )
            self._wake_sender.set()

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._wake_writer.set()
        try:
            while self._tasks and loop.time() < deadline:
                written = not self._buffer and not self._writing
                if written and (self._failing or self._caught_up()):
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._changed.wait()
        finally:
            self._closed = True
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._tasks:
                await self._save_cursor(force=True)
            if self._buffer:
                records, self._buffer = self._buffer, []
                self._write_now(records)
            # The active segment's descriptor stays open: a session ending during
            # shutdown still writes its event (put after close); exit closes it.

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._buffer:
                records, self._buffer = self._buffer, []
                self._writing = True
                self._in_write = len(records)
                try:
                    segment = await self._active_segment()
                    assert segment.fd is not None
                    lines = await asyncio.to_thread(_write, segment.fd, records, segment.end)
                except OSError as exc:
                    # A partly written batch is written again whole: auth keeps each id once.
                    log.error("%s: cannot write audit events (retrying): %s", self._name, exc)
                    self._buffer[:0] = records
                    await asyncio.sleep(1)
                    continue
                finally:
                    self._writing = False
                    self._in_write = 0
                self._remember(segment, lines)
                self._wake_sender.set()
                self._changed.set()

    def _remember(self, segment: _Segment, lines: list[tuple[int, dict[str, Any]]]) -> None:
        """Move `segment`'s end past `lines` (just written), keeping them for the sender."""
        position = segment.end
        for length, record in lines:
            if len(self._fresh) < FRESH_EVENTS:
                self._fresh.append(_Fresh(segment.seq, position, position + length, record))
            position += length
        segment.end = position

    async def _active_segment(self) -> _Segment:
        active = self._segments[-1]
        if active.end < self._segment_bytes:
            return active
        new = await asyncio.to_thread(self._open_segment, active.seq + 1)
        fd, active.fd = active.fd, None
        if fd is not None:
            os.close(fd)
        self._segments.append(new)
        return new

    def _write_now(self, records: list[dict[str, Any]]) -> None:
        fd = self._segments[-1].fd if self._segments else None
        try:
            if fd is None:
                raise OSError("the spool was never started")
            lines = _write(fd, records, self._segments[-1].end)
        except OSError as exc:
            kinds = ", ".join(sorted({str(r["event"]) for r in records}))
            count = len(records)
            log.error(
                "%s: %d audit events lost at shutdown (%s): %s", self._name, count, kinds, exc
            )
            return
        self._segments[-1].end += sum(length for length, _ in lines)

    # ------------------------------------------------------------------ the sender side

    def _caught_up(self) -> bool:
        return len(self._segments) <= 1 and (
            not self._segments or self._offset >= self._segments[0].end
        )

    async def _sender(self) -> None:
        delay = BACKOFF_FIRST
        loop = asyncio.get_running_loop()
        while True:
            wait = self._last_call + self._min_interval - loop.time()
            if wait > 0:
                # Busy: what is put meanwhile goes in the same call.
                await asyncio.sleep(wait)
            batch = await self._next_batch()
            if not batch:
                await self._save_cursor()
                self._changed.set()
                if self._cursor_saved != self._cursor():
                    # Saved within CURSOR_SECONDS, or with the next call.
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the
                    # result of a wait that ended as the task was cancelled, swallowing
                    # the cancel, and close() then waited for this task forever.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(CURSOR_SECONDS):
                            await self._wake_sender.wait()
                else:
                    await self._wake_sender.wait()
                self._wake_sender.clear()
                continue
            self._last_call = loop.time()
            try:
                await self._deliver(batch)
            except Exception as exc:
                # The files are the record: what is sent next is read from them.
                self._fresh.clear()
                if not self._failing:
                    log.warning(
                        "%s: auth did not take %d audit events (kept on disk, retrying): %s",
                        self._name,
                        len(batch),
                        exc,
                    )
                self._failing = True
                self._changed.set()
                # Jitter: nodes that lost auth together do not all come back at once.
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if self._failing:
                log.info("%s: auth takes audit events again", self._name)
            self._failing = False
            delay = BACKOFF_FIRST

    async def _deliver(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """Send `batch` ((end offset, record), ...) and move the cursor past it."""
        try:
            async with asyncio.timeout(SEND_TIMEOUT):  # not wait_for: see _sender
                await self._send([r for _, r in batch])
        except _REFUSED as exc:
            if len(batch) == 1:
                await asyncio.to_thread(self._set_aside, batch[0][1], exc)
            else:
                # One bad event refuses the call: find it, keep the rest.
                for item in batch:
                    await self._deliver([item])
                return
        else:
            self.delivered += len(batch)
        await self._acknowledge(batch[-1][0])

    async def _acknowledge(self, offset: int) -> None:
        self._offset = offset
        self._changed.set()
        await self._save_cursor()

    def _cursor(self) -> tuple[int, int]:
        return (self._segments[0].seq if self._segments else 0, self._offset)

    async def _save_cursor(self, force: bool = False) -> None:
        """Write the cursor if it moved, at most every CURSOR_SECONDS unless `force`: a
        crash in between only resends what auth already keeps once."""
        cursor = self._cursor()
        now = asyncio.get_running_loop().time()
        if cursor == self._cursor_saved or (not force and now - self._cursor_time < CURSOR_SECONDS):
            return
        self._cursor_time = now
        try:
            await asyncio.to_thread(_write_cursor, self._dir, *cursor)
        except OSError as exc:  # only costs a resend after a restart
            log.warning("%s: cannot save the audit cursor: %s", self._name, exc)
        else:
            self._cursor_saved = cursor

    async def _next_batch(self) -> list[tuple[int, dict[str, Any]]]:
        """The next events to send, each with the offset just past it; [] when none."""
        while True:
            segment = self._segments[0] if self._segments else None
            if segment is None:
                return []
            if self._offset >= segment.end:
                if segment.fd is not None or len(self._segments) == 1:
                    return []  # the active segment, all sent
                # A sealed segment, all acknowledged: gone.
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(segment.path.unlink)
                self._segments.pop(0)
                self._offset = 0
                continue
            batch = self._fresh_batch(segment)
            if batch:
                return batch
            batch = await self._read_batch(segment)
            if batch:
                return batch

    def _fresh_batch(self, segment: _Segment) -> list[tuple[int, dict[str, Any]]]:
        """The next batch from what the writer just wrote, if that is where the cursor is."""
        fresh = self._fresh
        # Left behind: sent from the files (or skipped) already.
        while fresh and (
            fresh[0].seq < segment.seq
            or (fresh[0].seq == segment.seq and fresh[0].end <= self._offset)
        ):
            fresh.popleft()
        if not fresh or fresh[0].seq != segment.seq or fresh[0].start != self._offset:
            return []
        batch: list[tuple[int, dict[str, Any]]] = []
        size = 0
        position = self._offset
        for item in fresh:
            size += item.end - item.start
            # Lines the memory copy skipped while it was full lie between two that are
            # not contiguous: they are read from the file next, not jumped over.
            if item.seq != segment.seq or item.start != position:
                break
            if len(batch) >= BATCH_EVENTS or size > BATCH_BYTES:
                break
            batch.append((item.end, item.record))
            position = item.end
        return batch

    async def _read_batch(self, segment: _Segment) -> list[tuple[int, dict[str, Any]]]:
        start = self._offset
        data = await asyncio.to_thread(
            _read, segment.path, start, min(segment.end - start, BATCH_BYTES)
        )
        batch: list[tuple[int, dict[str, Any]]] = []
        position = start
        for line in data.split(b"\n")[:-1]:  # the last piece is a partial line, or b""
            position += len(line) + 1
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                log.error("%s: skipping a damaged audit line in %s", self._name, segment.path)
                if batch:
                    batch[-1] = (position, batch[-1][1])  # acknowledged along with it
                else:
                    self._offset = position
                continue
            batch.append((position, record))
            if len(batch) >= BATCH_EVENTS:
                break
        if position == start:
            # One line longer than a batch (put never writes one): step over it.
            log.error("%s: skipping an oversized audit line in %s", self._name, segment.path)
            newline = data.find(b"\n")
            self._offset = start + (newline + 1 if newline >= 0 else len(data))
        return batch

    # ------------------------------------------------------------------ files

    def _recover(self) -> None:
        """Find what an earlier run left (runs once, in a thread, before the tasks)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._dir.chmod(0o700)
        found = sorted(
            (int(m.group(1)), self._dir / m.group(0))
            for name in os.listdir(self._dir)
            if (m := _SEGMENT.fullmatch(name))
        )
        cursor_seq, cursor_offset = _read_cursor(self._dir)
        self._cursor_saved = (cursor_seq, cursor_offset)
        for seq, path in found:
            end = _whole_lines(path)
            if seq < cursor_seq or end == 0:
                path.unlink(missing_ok=True)  # acknowledged, or nothing in it
                continue
            self._segments.append(_Segment(seq, path, end))
        if self._segments and self._segments[0].seq == cursor_seq:
            self._offset = min(cursor_offset, self._segments[0].end)
        last = max((seq for seq, _ in found), default=0)
        # New events go to a new segment: an old one may end with a torn line.
        self._segments.append(self._open_segment(last + 1))

    def _open_segment(self, seq: int) -> _Segment:
        path = self._dir / f"{seq:012d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _fsync_dir(self._dir)
        return _Segment(seq, path, os.fstat(fd).st_size, fd)

    def _set_aside(self, record: dict[str, Any], exc: Exception) -> None:
        log.error(
            "%s: auth refused audit event %s (%s); kept in refused.jsonl: %s",
            self._name,
            record.get("event"),
            record.get("id"),
            exc,
        )
        # Owner-only, like the segments: events name users and command lines.
        fd = os.open(self._dir / "refused.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, _line({"refused": str(exc), "record": record}))
        finally:
            os.close(fd)


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _line(record: dict[str, Any]) -> bytes:
    return _ENCODER.encode(record).encode() + b"\n"


def _write(fd: int, records: list[dict[str, Any]], end: int) -> list[tuple[int, dict[str, Any]]]:
    """Append `records` as lines and fsync. Runs in a thread. Each line's length and the
    record as it was written (what reading the line back gives, once sent as JSON).

    `end` is where the segment's last whole line ends: a write that fails part way (a
    full disk) is cut back to it, so the file never holds half a line, whose length
    would put every offset after it out of step with the lines read back."""
    lines = []
    written = []
    for record in records:
        line, record = _encoded(record)
        if len(line) > MAX_EVENT_BYTES:
            # Keep batches within what auth takes; auth cuts to the same caps anyway.
            line, record = _encoded({**record, "fields": capped(record["fields"])})
        lines.append(line)
        written.append((len(line), record))
    view = memoryview(b"".join(lines))
    try:
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise
    return written


_STRICT = json.JSONEncoder(separators=(",", ":"))


def _encoded(record: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """`record`'s line, and the record to send for it: itself when it is plain JSON, else
    (a value JSON has no type for, written as its str) the line read back."""
    try:
        return _STRICT.encode(record).encode() + b"\n", record
    except TypeError:
        line = _line(record)
        return line, json.loads(line)


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(size)


def _whole_lines(path: Path) -> int:
    """The length of `path` up to its last newline (a torn last line is left out)."""
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            block = file.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _read_cursor(directory: Path) -> tuple[int, int]:
    try:
        seq, offset = (directory / "cursor").read_text().split()
        return int(seq), int(offset)
    except (OSError, ValueError):
        return 0, 0


def _write_cursor(directory: Path, seq: int, offset: int) -> None:
    temporary = directory / "cursor.tmp"
    temporary.write_text(f"{seq} {offset}\n")
    temporary.replace(directory / "cursor")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("audit spool task %s failed", task.get_name(), exc_info=task.exception())
