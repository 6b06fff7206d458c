"""The audit event store on SQLite: append events, search them by time and filters.

Audit events are JSON objects (`{"event": "session.start", "code": "T2000I",
"time": "2030-01-01T12:00:00Z", "uid": "...", "user": "alice", "node": "db-1", ...}`).
The whole event is kept as JSON; the fields searches filter on are copied into columns:

    audit_events(id, time, event, code, uid UNIQUE, user, node, data)
    indexes: (time), (event, time), (user, time), (node, time)

`time` is microseconds since the epoch, so ordering is exact and the indexes stay
small. SQLite appends the row id to every index, so each of them is also ordered by
(time, id) within its leading column, and a page is one index range scan: a search
stays fast however many events are stored.

Pages are keyset-paginated: the cursor is the (time, id) of the last event returned,
so paging never skips or repeats an event, even while new ones are appended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from certgate.backend.events import (
    check_search,
    decode_cursor,
    encode_cursor,
    event_row,
    to_micros,
)
from certgate.backend.sqlite import SQLiteWorker, translate_sqlite_error, write_transaction

log = logging.getLogger(__name__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    event TEXT NOT NULL,
    code TEXT NOT NULL,
    uid TEXT NOT NULL UNIQUE,
    user TEXT,
    node TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time);
CREATE INDEX IF NOT EXISTS audit_events_event_time ON audit_events (event, time);
CREATE INDEX IF NOT EXISTS audit_events_user_time ON audit_events (user, time);
CREATE INDEX IF NOT EXISTS audit_events_node_time ON audit_events (node, time);
"""

_INSERT = (
    # OR IGNORE on uid: an emitter that retries after a lost answer must not log the
    # same event twice.
    "INSERT OR IGNORE INTO audit_events (time, event, code, uid, user, node, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


# Inline appends between two checkpoints (made on the worker thread, see append_many),
# or sooner once the log has grown by this much: a bulk load of random uids dirties
# index pages all over the file, and 200 of its transactions can log hundreds of MiB.
_CHECKPOINT_EVERY = 200
_CHECKPOINT_WAL_BYTES = 16 * 1024 * 1024
# When the log starts over after a checkpoint, SQLite reuses the file at its largest
# size unless told otherwise: truncate it back to this. Well under the size that calls
# for a checkpoint, or the truncated file alone would call for the next one.
_WAL_SIZE_LIMIT = 4 * 1024 * 1024


class SQLiteEventStore:
    """Audit events in one SQLite file. Open with `await SQLiteEventStore.open(path)`.

    Appends are the hot path (every certificate issued is an event, and its caller
    waits for it to be stored), so they run on the event loop's own connection when
    they need not wait: that connection has no busy timeout, so an append that would
    wait for another process's write lock fails at once and goes to the worker thread,
    which waits. A commit under WAL with synchronous=NORMAL writes to the page cache
    only; the checkpoints that sync to disk are made on the worker thread, every
    _CHECKPOINT_EVERY inline appends or _CHECKPOINT_WAL_BYTES of log, whichever comes
    first. The log then stays near that size, plus the largest single `append_many`
    (one transaction is never split): bulk loads should pass batches, not everything.
    """

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._wal_path = path.with_name(path.name + "-wal")
        # The log's size below which growth does not call for a checkpoint: 0, or its
        # size after a checkpoint that could not finish (another process was reading).
        self._wal_mark = 0
        self._db = SQLiteWorker(path, busy_timeout, name="certgate-events")
        self._writer: sqlite3.Connection | None = None
        self._writer_thread = 0
        self._inline_appends = 0
        self._checkpoint_due = False
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float = 5.0) -> SQLiteEventStore:
        store = cls(path, busy_timeout=busy_timeout)
        await store._db.start(_create_schema)
        return store

    async def append(self, event: Mapping[str, Any]) -> None:
        """Store one event; an event whose uid is already stored is ignored."""
        await self.append_many([event])

    async def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[bool]:
        """Store many events in one transaction (bulk loads, imports, benchmarks).

        Returns, for each event, whether it was stored now: False for one whose uid was
        stored before (a service resending what auth stored but could not acknowledge),
        which is left as it was.
        """
        rows = [event_row(event) for event in events]

        def insert(conn: sqlite3.Connection) -> list[bool]:
            with write_transaction(conn):
                # One statement per row, not executemany: only rowcount tells a new
                # event from an ignored duplicate.
                return [conn.execute(_INSERT, row).rowcount == 1 for row in rows]

        if not rows:
            return []
        writer = None if self._checkpoint_due else self._loop_writer()
        if writer is not None:
            try:
                inserted = insert(writer)
            except sqlite3.Error as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise translate_sqlite_error(exc) from exc
            else:
                self._inline_appends += 1
                self._checkpoint_due = (
                    self._inline_appends >= _CHECKPOINT_EVERY
                    or self._wal_size() >= self._wal_mark + _CHECKPOINT_WAL_BYTES
                )
                return inserted
        if not self._checkpoint_due:
            return await self._db.run(insert)

        # Every so many inline appends, one goes to the worker, which checkpoints right
        # after it (as SQLite's auto-checkpoint would, syncing to disk off the loop).
        # Appends meanwhile queue behind it, so the checkpoint can catch up with the log
        # and the next write starts the log over instead of growing it.
        # A checkpoint that copies the whole log back lets the next write start it over
        # (truncated to _WAL_SIZE_LIMIT); one that cannot (a reader in another process
        # still needs the log) is tried again once the log has grown by as much again.
        def insert_and_checkpoint(conn: sqlite3.Connection) -> tuple[list[bool], int]:
            inserted = insert(conn)
            try:
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("audit event store checkpoint failed: %s", exc)
                return inserted, self._wal_size()
            _, logged, copied = row
            return inserted, 0 if logged == copied else self._wal_size()

        try:
            inserted, self._wal_mark = await self._db.run(insert_and_checkpoint)
        finally:
            self._inline_appends = 0
            self._checkpoint_due = False
        return inserted

    def _loop_writer(self) -> sqlite3.Connection | None:
        """The connection of the thread that opened it (the event loop's); it never waits."""
        if self._closed:
            return None
        if self._writer is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # syncs: the worker's job
                conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
            except sqlite3.Error:
                conn.close()
                return None
            self._writer, self._writer_thread = conn, threading.get_ident()
        return self._writer if self._writer_thread == threading.get_ident() else None

    def _wal_size(self) -> int:
        try:
            return self._wal_path.stat().st_size
        except OSError:
            return 0

    async def search(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        event_types: Sequence[str] = (),
        user: str | None = None,
        node: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        # str rather than a Literal so callers can pass a query parameter through;
        # anything but "desc" or "asc" is refused below.
        order: str = "desc",
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of events with since <= time < until matching every filter given.

        `event_types` matches any of the types listed (all types if empty). Returns the
        events (newest first for "desc") and the cursor for the next page, or None when
        this page is the last. Pass the cursor back with the same filters and order.
        """
        check_search(order, event_types, limit)

        conditions: list[str] = []
        params: list[Any] = []
        if since is not None:
            conditions.append("time >= ?")
            params.append(to_micros(since, "since"))
        if until is not None:
            conditions.append("time < ?")
            params.append(to_micros(until, "until"))
        if user is not None:
            conditions.append("user = ?")
            params.append(user)
        if node is not None:
            conditions.append("node = ?")
            params.append(node)
        if cursor is not None:
            after_time, after_id = decode_cursor(cursor, order)
            # Spelled as a range on time plus a tie-break, so the index serves it.
            if order == "desc":
                conditions.append("time <= ? AND (time < ? OR id < ?)")
            else:
                conditions.append("time >= ? AND (time > ? OR id > ?)")
            params += [after_time, after_time, after_id]

        direction = "DESC" if order == "desc" else "ASC"
        ordering = f"ORDER BY time {direction}, id {direction} LIMIT ?"
        # One more than asked for tells whether another page follows.
        fetch = limit + 1
        types = sorted(set(event_types))
        if not types:
            where = " AND ".join(conditions) or "1"
            sql = f"SELECT id, time, data FROM audit_events WHERE {where} {ordering}"
            args = [*params, fetch]
        else:
            # One ordered, limited scan of the (event, time) index per type, merged:
            # `event IN (...)` would make SQLite sort every match before the LIMIT.
            parts = []
            args = []
            for kind in types:
                where = " AND ".join(["event = ?", *conditions])
                parts.append(
                    f"SELECT * FROM (SELECT id, time, data FROM audit_events"
                    f" WHERE {where} {ordering})"
                )
                args += [kind, *params, fetch]
            sql = f"SELECT id, time, data FROM ({' UNION ALL '.join(parts)}) {ordering}"
            args.append(fetch)

        rows = await self._db.run(lambda c: c.execute(sql, args).fetchall())
        page = rows[:limit]
        events = [json.loads(data) for _, _, data in page]
        next_cursor = None
        if len(rows) > limit:
            last_id, last_time, _ = page[-1]
            next_cursor = encode_cursor(last_time, last_id, order)
        return events, next_cursor

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None and self._writer_thread == threading.get_ident():
            with contextlib.suppress(sqlite3.Error):
                self._writer.close()
        self._writer = None
        await self._db.close()


def _create_schema(conn: sqlite3.Connection) -> None:
    # The worker's connection (it checkpoints, and writes when the loop's cannot).
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
    with write_transaction(conn):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
