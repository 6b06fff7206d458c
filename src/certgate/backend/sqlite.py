"""The SQLite backend: the default `Backend`, one file on disk, safe to share between
processes on one host.

    writer (any process)                           watcher (any process)
    --------------------                           ---------------------
    BEGIN IMMEDIATE                                SELECT ... FROM events
      INSERT INTO events  -> rowid = revision        WHERE revision > cursor
      INSERT/UPDATE/DELETE kv                        ORDER BY revision
    COMMIT                                         every poll_interval, and at once
                                                   when this backend itself wrote

Every write appends a row to `events` in the same transaction that changes `kv`, and
that row's AUTOINCREMENT id is the item's new revision. SQLite lets one writer commit
at a time and takes the id inside the write lock, so revisions become visible in
strictly increasing order: a watcher that remembers the last revision it delivered
never skips an event, whichever process wrote it.

Expired items are hidden from every read at once; a maintenance task deletes them
shortly after and logs DELETE events, which is how watchers learn of expiry. The same
task compacts the event log (keeping `max_events` events and `max_event_age` of
history); a watch resuming from a compacted revision fails with `CompareFailed`, and
the caller reads the current state again.

The connection lives on one worker thread per backend (`SQLiteWorker`), so waiting on
another process's lock never blocks the event loop; calls queued while it works are
answered together, one wakeup of the loop per batch. Reads of single keys (`get`,
`get_many`) are the exception: they run on a second, read-only connection on the event
loop itself, which cannot wait (no busy timeout; WAL readers never wait for writers)
and hands the rare read that would wait to the worker (see `_point_read`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from certgate.backend.base import (
    Event,
    EventType,
    Item,
    checked_value,
    prefix_end,
    watched_prefixes,
)
from certgate.backend.write_marks import note_store_write
from certgate.clock import Clock, SystemClock
from certgate.errors import (
    AlreadyExists,
    BadParameter,
    CertgateError,
    CompareFailed,
    ConnectionProblem,
    NotFound,
)
from certgate.tasks import log_failure

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many events a watcher reads per query, and how many expired items one
# maintenance pass deletes per transaction (short write transactions keep other
# writers' waits short).
_BATCH = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    expires REAL
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL,
    expires REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('compacted_through', 0);
"""


def translate_sqlite_error(exc: sqlite3.Error) -> CertgateError:
    """Turn a sqlite3 error into the certgate error a caller can act on."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return ConnectionProblem(f"storage is busy, try again: {exc}")
    if isinstance(exc, sqlite3.IntegrityError):
        return BadParameter(f"storage refused the write: {exc}")
    return CertgateError(f"storage error: {exc}")


class SQLiteWorker:
    """One sqlite connection owned by one thread; coroutines hand it work with `run`.

    sqlite3 calls block (a busy lock can wait for seconds), so they never run on the
    event loop. A single thread also means the connection is never shared between
    threads, and calls through one worker run one at a time, in the order made.

    Under load many calls wait at once: the thread takes every queued call (up to
    `_MAX_BATCH_CALLS`), runs them in order, and hands all their answers back to the
    event loop in one wakeup, so a busy server pays the thread round trip once per
    batch rather than once per call.
    """

    def __init__(self, path: Path, busy_timeout: float, name: str) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Open the file (WAL, NORMAL sync, busy timeout) and run `setup` on it."""

        def connect() -> None:
            # The store holds secrets (CA keys, password hashes): create it readable by
            # its owner only. SQLite gives the -wal and -shm files the same mode.
            os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so write
            # transactions can be BEGIN IMMEDIATE (see write_transaction).
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                # With WAL, NORMAL survives process crashes; only a power loss can
                # drop the last commits.
                conn.execute("PRAGMA synchronous = NORMAL")
                setup(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

        try:
            await self._submit(connect)
        except sqlite3.Error as exc:
            await self.close()
            raise CertgateError(f"cannot open storage {self._path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the worker thread; sqlite3 errors become ours."""
        if self._closed:
            raise ConnectionProblem("storage is closed")
        conn = self._conn
        if conn is None:
            raise ConnectionProblem("storage is not open")
        try:
            return await self._submit(lambda: fn(conn))
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc) from exc

    async def close(self) -> None:
        """Close the connection after the calls already queued have run."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._submit(conn.close)
        if self._thread is not None:
            self._calls.put(None)  # the thread ends after the calls before it

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn))
        return await future

    def _serve(self) -> None:
        """The worker thread: runs calls in order and answers them a batch at a time."""
        while True:
            batch = [self._calls.get()]
            while len(batch) < _MAX_BATCH_CALLS:
                try:
                    batch.append(self._calls.get_nowait())
                except queue.Empty:
                    break
            answers: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for call in batch:
                if call is None:
                    continue
                loop, future, fn = call
                try:
                    outcome: _Outcome = (future, fn(), None)
                except BaseException as exc:  # handed to the caller, who re-raises it
                    outcome = (future, None, exc)
                answers.setdefault(loop, []).append(outcome)
            for loop, outcomes in answers.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, outcomes)
            if None in batch:
                return


# A call for the worker thread: the caller's loop, the future it awaits, the work.
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
_MAX_BATCH_CALLS = 64


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: answer the calls of one batch."""
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

    IMMEDIATE takes the write lock up front (waiting through busy_timeout). A deferred
    transaction that reads first and writes later can instead fail at once with
    SQLITE_BUSY when another process committed in between, which no wait would fix.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A consistent snapshot across several SELECTs; never blocks writers under WAL."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _prefix_clause(prefixes: Sequence[str]) -> tuple[str, list[Any]]:
    """SQL matching keys under any of `prefixes`, and its parameters."""
    parts: list[str] = []
    params: list[Any] = []
    for prefix in prefixes:
        if prefix == "":
            return "1", []
        end = prefix_end(prefix)
        if end is None:
            parts.append("(key >= ? AND substr(key, 1, ?) = ?)")
            params += [prefix, len(prefix), prefix]
        else:
            parts.append("(key >= ? AND key < ?)")
            params += [prefix, end]
    return "(" + " OR ".join(parts) + ")", params


def _moment(epoch: float | None) -> datetime | None:
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (ValueError, OverflowError, OSError):
        # An expiry past year 9999 (written before times were checked at the edge, or
        # straight into the file): it never comes, and must not fail every read of
        # its prefix with "year 10000 is out of range".
        return datetime.max.replace(tzinfo=UTC)


def _check_item(item: Item) -> tuple[bytes, float | None]:
    value = checked_value(item)
    return value, None if item.expires is None else item.expires.timestamp()


def _current_revision(conn: sqlite3.Connection) -> int:
    # sqlite_sequence keeps the highest id ever given out, even after compaction
    # has deleted that event.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


def _append_event(
    conn: sqlite3.Connection,
    key: str,
    kind: EventType,
    value: bytes,
    expires: float | None,
    now: float,
) -> int:
    cursor = conn.execute(
        "INSERT INTO events (key, type, value, expires, created) VALUES (?, ?, ?, ?, ?)",
        (key, kind.value, value, expires, now),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _live_revision(conn: sqlite3.Connection, key: str, now: float) -> int | None:
    """The revision of `key` if it is stored and not expired."""
    row = conn.execute(
        "SELECT revision FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)",
        (key, now),
    ).fetchone()
    return None if row is None else int(row[0])


def _store(
    conn: sqlite3.Connection, key: str, value: bytes, expires: float | None, now: float
) -> int:
    revision = _append_event(conn, key, EventType.PUT, value, expires, now)
    conn.execute(
        "INSERT INTO kv (key, value, revision, expires) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET"
        " value = excluded.value, revision = excluded.revision, expires = excluded.expires",
        (key, value, revision, expires),
    )
    return revision


class SQLiteBackend:
    """`Backend` on one SQLite file; see the module docstring for how it works.

    Build it with `await SQLiteBackend.open(path, clock=...)`; the constructor does no
    I/O. Every instance, in this process or another, on the same file sees the same
    items, revisions and events.
    """

    def __init__(
        self,
        path: Path,
        clock: Clock | None = None,
        poll_interval: float = 0.05,
        *,
        busy_timeout: float = 5.0,
        max_events: int = 100_000,
        max_event_age: timedelta = timedelta(hours=1),
        compact_interval: float = 60.0,
    ) -> None:
        if poll_interval <= 0:
            raise BadParameter(f"poll_interval must be positive, got {poll_interval}")
        if max_events < 1:
            raise BadParameter(f"max_events must be at least 1, got {max_events}")
        self.path = path
        self._clock: Clock = clock or SystemClock()
        self._poll_interval = poll_interval
        self._max_events = max_events
        self._max_event_age = max_event_age
        self._compact_interval = compact_interval
        self._db = SQLiteWorker(path, busy_timeout, name="certgate-sqlite")
        # Replaced by a fresh Event on each local write, so a watcher that took the
        # current one before reading is woken by any write after that read.
        self._wakeup = asyncio.Event()
        # The newest revision this instance knows of: its own writes at once, other
        # processes' within a poll interval. watch(start_revision=0) starts here.
        self._known_revision = 0
        self._maintenance: asyncio.Task[None] | None = None
        # Point reads run on the event loop's own connection (see _point_read).
        self._reader: sqlite3.Connection | None = None
        self._reader_thread = 0
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        clock: Clock | None = None,
        poll_interval: float = 0.05,
        *,
        busy_timeout: float = 5.0,
        max_events: int = 100_000,
        max_event_age: timedelta = timedelta(hours=1),
        compact_interval: float = 60.0,
    ) -> SQLiteBackend:
        """Open (creating if needed) the database at `path` and start maintenance."""
        backend = cls(
            path,
            clock,
            poll_interval,
            busy_timeout=busy_timeout,
            max_events=max_events,
            max_event_age=max_event_age,
            compact_interval=compact_interval,
        )
        await backend._start()
        return backend

    async def _start(self) -> None:
        await self._db.start(_create_schema)
        self._known_revision = await self._db.run(_current_revision)
        self._maintenance = asyncio.create_task(
            self._maintain(), name=f"certgate-sqlite-maintenance:{self.path}"
        )
        self._maintenance.add_done_callback(log_failure(log, "sqlite maintenance"))

    # -- Backend -------------------------------------------------------------------

    async def get(self, key: str) -> Item:
        now = self._now()
        row = await self._point_read(
            lambda c: c.execute(
                "SELECT key, value, revision, expires FROM kv"
                " WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, now),
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"key {key} is not found")
        return _item(row)

    async def get_many(self, keys: Sequence[str]) -> list[Item]:
        if isinstance(keys, str):
            raise BadParameter("get_many takes a list of keys, not one string")
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        now = self._now()
        marks = ", ".join("?" * len(wanted))
        rows = await self._point_read(
            lambda c: c.execute(
                "SELECT key, value, revision, expires FROM kv"
                f" WHERE key IN ({marks}) AND (expires IS NULL OR expires > ?)",
                [*wanted, now],
            ).fetchall()
        )
        found = {row[0]: _item(row) for row in rows}
        return [found[key] for key in keys if key in found]

    async def _point_read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read by primary key on the event loop's own connection, else on the
        worker thread.

        Such a read costs microseconds, far less than handing it to the worker thread
        and back (renewals read the user and roles on every call). It never waits:
        under WAL a reader does not wait for writers, and the loop's connection has no
        busy timeout, so the rare read that would wait (a lock held while another
        process recovers the WAL) fails at once and goes to the worker, which waits.
        """
        reader = self._loop_reader()
        if reader is not None:
            try:
                return read(reader)
            except sqlite3.Error as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise translate_sqlite_error(exc) from exc
        return await self._db.run(read)

    def _loop_reader(self) -> sqlite3.Connection | None:
        """The read-only connection of the thread that opened it (the event loop's)."""
        if self._closed:
            return None
        if self._reader is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute("PRAGMA query_only = 1")
            except sqlite3.Error:
                conn.close()
                return None
            self._reader, self._reader_thread = conn, threading.get_ident()
        return self._reader if self._reader_thread == threading.get_ident() else None

    async def create(self, item: Item) -> Item:
        note_store_write()
        value, expires = _check_item(item)
        now = self._now()

        def create(conn: sqlite3.Connection) -> int:
            with write_transaction(conn):
                if _live_revision(conn, item.key, now) is not None:
                    raise AlreadyExists(f"key {item.key} already exists")
                # An expired row not yet reaped is simply replaced.
                return _store(conn, item.key, value, expires, now)

        return self._written(item, value, await self._db.run(create))

    async def put(self, item: Item) -> Item:
        note_store_write()
        value, expires = _check_item(item)
        now = self._now()

        def put(conn: sqlite3.Connection) -> int:
            with write_transaction(conn):
                return _store(conn, item.key, value, expires, now)

        return self._written(item, value, await self._db.run(put))

    async def write_many(
        self, items: Sequence[Item], create_only: bool, deletes: Sequence[str] = ()
    ) -> list[Item]:
        note_store_write()
        checked = [_check_item(item) for item in items]
        now = self._now()
        last = 0

        def write(conn: sqlite3.Connection) -> list[int]:
            nonlocal last
            with write_transaction(conn):
                if create_only:
                    for item in items:
                        if _live_revision(conn, item.key, now) is not None:
                            raise AlreadyExists(f"key {item.key} already exists")
                written = [
                    _store(conn, item.key, value, expires, now)
                    for item, (value, expires) in zip(items, checked, strict=True)
                ]
                for key in deletes:
                    if _live_revision(conn, key, now) is not None:
                        conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                        last = _append_event(conn, key, EventType.DELETE, b"", None, now)
                return written

        revisions = await self._db.run(write)
        if last:
            self._wrote(last)
        return [
            self._written(item, value, revision)
            for item, (value, _), revision in zip(items, checked, revisions, strict=True)
        ]

    async def compare_and_swap(self, item: Item, expected_revision: int) -> Item:
        note_store_write()
        value, expires = _check_item(item)
        now = self._now()

        def swap(conn: sqlite3.Connection) -> int:
            with write_transaction(conn):
                revision = _live_revision(conn, item.key, now)
                if revision is None:
                    raise NotFound(f"key {item.key} is not found")
                if revision != expected_revision:
                    raise CompareFailed(
                        f"key {item.key} changed: it is at revision {revision},"
                        f" not {expected_revision}; read it again"
                    )
                return _store(conn, item.key, value, expires, now)

        return self._written(item, value, await self._db.run(swap))

    async def delete(self, key: str) -> None:
        note_store_write()
        now = self._now()

        def delete(conn: sqlite3.Connection) -> int:
            with write_transaction(conn):
                if _live_revision(conn, key, now) is None:
                    raise NotFound(f"key {key} is not found")
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                return _append_event(conn, key, EventType.DELETE, b"", None, now)

        self._wrote(await self._db.run(delete))

    async def delete_range(self, prefix: str) -> int:
        """Delete every item under `prefix`; returns how many were visible."""
        note_store_write()
        now = self._now()
        where, params = _prefix_clause([prefix])

        def delete_range(conn: sqlite3.Connection) -> tuple[int, int]:
            with write_transaction(conn):
                rows = conn.execute(
                    f"SELECT key, expires FROM kv WHERE {where} ORDER BY key", params
                )
                doomed = rows.fetchall()
                revision = 0
                for key, _ in doomed:
                    conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                    # Expired rows get their DELETE event here instead of from the
                    # reaper, so watchers see each removal exactly once.
                    revision = _append_event(conn, key, EventType.DELETE, b"", None, now)
                live = sum(1 for _, expires in doomed if expires is None or expires > now)
                return live, revision

        live, revision = await self._db.run(delete_range)
        if revision:
            self._wrote(revision)
        return live

    async def range(self, prefix: str, limit: int = 0) -> list[Item]:
        if limit < 0:
            raise BadParameter(f"limit must not be negative, got {limit}")
        now = self._now()
        where, params = _prefix_clause([prefix])
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT key, value, revision, expires FROM kv"
                f" WHERE {where} AND (expires IS NULL OR expires > ?)"
                " ORDER BY key LIMIT ?",
                [*params, now, limit or -1],
            ).fetchall()
        )
        return [_item(row) for row in rows]

    async def current_revision(self) -> int:
        revision = await self._db.run(_current_revision)
        self._known_revision = max(self._known_revision, revision)
        return revision

    def watch(self, prefixes: Sequence[str], start_revision: int = 0) -> AsyncIterator[Event]:
        """Events under `prefixes` after `start_revision`, in revision order.

        start_revision=0 starts after the newest revision this instance knows of when
        `watch` is called: every write made through it before the call is excluded,
        and writes by other processes in the last poll interval may be included.
        To follow a state read with `range`, take `current_revision()` before the
        read and watch from there (events may repeat what the read saw; never skip).
        """
        checked = watched_prefixes(prefixes, start_revision)
        return self._watch(checked, start_revision or self._known_revision)

    def seconds_behind(self) -> float:
        # One file on this host: its watches read it every poll interval and a read
        # does not fail for a network's reasons.
        return 0.0

    async def catch_up(self, timeout: float) -> bool:
        return True

    async def close(self) -> None:
        """Stop maintenance, end every watch, and close the file."""
        if self._closed:
            return
        self._closed = True
        self._notify()
        if self._maintenance is not None:
            self._maintenance.cancel()
            # wait() rather than await: a cancellation of close() itself must still
            # propagate, and the task's own CancelledError must not.
            await asyncio.wait([self._maintenance])
        if self._reader is not None and self._reader_thread == threading.get_ident():
            with contextlib.suppress(sqlite3.Error):
                self._reader.close()
        self._reader = None
        await self._db.close()

    # -- maintenance ----------------------------------------------------------------

    async def compact(self) -> int:
        """Drop old events from the log now; returns how many were dropped.

        Runs on its own every `compact_interval` seconds; public for tests and tools.
        """
        now = self._now()
        oldest_kept = now - self._max_event_age.total_seconds()

        def compact(conn: sqlite3.Connection) -> int:
            with write_transaction(conn):
                head = _current_revision(conn)
                (watermark,) = conn.execute(
                    "SELECT value FROM meta WHERE name = 'compacted_through'"
                ).fetchone()
                # Events are appended in time order, so the first young one bounds
                # the old ones; this scans only events about to be dropped.
                young = conn.execute(
                    "SELECT revision FROM events WHERE revision > ? AND created >= ?"
                    " ORDER BY revision LIMIT 1",
                    (watermark, oldest_kept),
                ).fetchone()
                cut = max(head - self._max_events, (young[0] - 1) if young else head)
                if cut <= watermark:
                    return 0
                dropped = conn.execute("DELETE FROM events WHERE revision <= ?", (cut,)).rowcount
                conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted_through'", (cut,))
                return int(dropped)

        return await self._db.run(compact)

    async def _maintain(self) -> None:
        """Reap expired items and learn other processes' revisions, every poll interval."""
        next_compaction = time.monotonic() + self._compact_interval
        failures = 0
        while not self._closed:
            delay = self._poll_interval
            now = self._now()
            try:
                head, reaped = await self._db.run(functools.partial(_reap, now=now))
                self._known_revision = max(self._known_revision, head)
                if reaped:
                    self._notify()
                if reaped == _BATCH:
                    delay = 0  # more to reap: go on at once
                if time.monotonic() >= next_compaction:
                    await self.compact()
                    next_compaction = time.monotonic() + self._compact_interval
                failures = 0
            except Exception as exc:
                if self._closed:
                    return
                failures += 1
                # Back off with jitter so processes sharing a busy file spread out.
                delay = min(5.0, self._poll_interval * 2**failures) * random.uniform(0.5, 1.5)
                log.warning(
                    "sqlite maintenance failed, retrying in %.2fs: %s",
                    delay,
                    exc,
                    exc_info=not isinstance(exc, CertgateError),  # a bug: keep the trace
                )
            await asyncio.sleep(delay)

    # -- watch ----------------------------------------------------------------------

    async def _watch(self, prefixes: tuple[str, ...], cursor: int) -> AsyncIterator[Event]:
        where, params = _prefix_clause(prefixes)
        while not self._closed:
            wakeup = self._wakeup  # taken before reading, so no write is missed
            try:
                read = functools.partial(_read_events, where=where, params=params, cursor=cursor)
                rows, head = await self._db.run(read)
            except ConnectionProblem:
                if self._closed:
                    return
                raise
            for revision, key, kind, value, expires in rows:
                cursor = revision
                item = Item(key=key, value=value, revision=revision, expires=_moment(expires))
                yield Event(type=EventType(kind), item=item)
            if len(rows) == _BATCH:
                continue
            # Nothing else under our prefixes up to head: skip the rest next time.
            cursor = max(cursor, head)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await wakeup.wait()

    # -- helpers --------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _notify(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _wrote(self, revision: int) -> None:
        self._known_revision = max(self._known_revision, revision)
        self._notify()

    def _written(self, item: Item, value: bytes, revision: int) -> Item:
        self._wrote(revision)
        return Item(key=item.key, value=value, revision=revision, expires=item.expires)


def _create_schema(conn: sqlite3.Connection) -> None:
    # Several processes may open a new file at once; the write lock serializes them
    # and IF NOT EXISTS makes the losers no-ops.
    with write_transaction(conn):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


def _item(row: tuple[Any, ...]) -> Item:
    key, value, revision, expires = row
    return Item(key=key, value=bytes(value), revision=revision, expires=_moment(expires))


def _reap(conn: sqlite3.Connection, now: float) -> tuple[int, int]:
    """Delete up to _BATCH expired items, logging a DELETE event for each.

    Returns (current revision, items deleted). The first SELECT is a cheap indexed
    read, so the write lock is taken only when something has expired.
    """
    expired = "SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ?"
    if conn.execute(f"{expired} LIMIT 1", (now,)).fetchone() is None:
        return _current_revision(conn), 0
    # Re-read under the write lock: another process may have reaped these already.
    with write_transaction(conn):
        keys = [key for (key,) in conn.execute(f"{expired} LIMIT {_BATCH}", (now,))]
        for key in keys:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            _append_event(conn, key, EventType.DELETE, b"", None, now)
        return _current_revision(conn), len(keys)


def _read_events(
    conn: sqlite3.Connection, where: str, params: list[Any], cursor: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Up to _BATCH events after `cursor` under the prefixes, and the head revision.

    Both come from one snapshot, so nothing at or below head can appear later.
    """
    with read_transaction(conn):
        (watermark,) = conn.execute(
            "SELECT value FROM meta WHERE name = 'compacted_through'"
        ).fetchone()
        if cursor < watermark:
            raise CompareFailed(
                f"watch revision {cursor} too old: events up to {watermark} were"
                " compacted; read the current state and watch again"
            )
        head = _current_revision(conn)
        rows = conn.execute(
            "SELECT revision, key, type, value, expires FROM events"
            f" WHERE revision > ? AND revision <= ? AND {where}"
            f" ORDER BY revision LIMIT {_BATCH}",
            [cursor, head, *params],
        ).fetchall()
    return rows, head
