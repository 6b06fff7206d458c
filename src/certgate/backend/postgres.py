"""The PostgreSQL backend: one store shared by several auth processes on several hosts.

    writer (any auth)                               every backend instance
    -----------------                               ----------------------
    BEGIN                                           LISTEN certgate_events  (wake-up only)
      UPDATE certgate_meta revision += 1  <- lock   feed: SELECT ... FROM certgate_events
      check (create / compare-and-swap / delete)           WHERE revision > head
      INSERT certgate_events (revision, ...)               ORDER BY revision
      upsert / delete certgate_kv                   on every NOTIFY, every poll_interval,
      NOTIFY certgate_events                        and at once after its own writes
    COMMIT

Revisions come from one counter row, incremented inside the writing transaction. The
row lock serializes writers, so revisions commit in increasing order: once revision N
is visible, every revision below it is too. A reader that remembers the last revision
it delivered therefore never skips one, and NOTIFY is only a wake-up: a lost
notification (a dropped connection, a restarted server) delays an event by at most
`poll_interval`, never loses it. (A PostgreSQL sequence would not do: its numbers are
taken outside the transaction, so revision 11 can commit before 10.)

One feed task per instance reads new events for all keys and keeps the recent ones in
memory; every watcher is served from that buffer, so a thousand watchers cost one
query per change, not a thousand. A watcher behind the buffer (a resume from an old
revision) reads the event table itself until it catches up. After a reconnect the
feed re-reads from its last revision; if the events it missed were compacted away
meanwhile, watchers that needed them get `CompareFailed` and reload (as with SQLite).

Expiry: reads hide expired items at once; a maintenance task in every instance deletes
them shortly after, logging DELETE events (each under the lock, so two instances never
both delete one item). The same task compacts the event log.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

CHANNEL = "certgate_events"
# Events read per query, and expired items deleted per transaction.
_BATCH = 1000
# How long the pool keeps retrying one connection. Its retries double without a cap
# (1, 2, 4, ... 128 s): after a two-minute outage the next try could be two minutes away,
# the database long back. Given up, the next query that needs a connection tries again
# at once.
RECONNECT_GIVE_UP = 10.0
# What a feed read may take beyond two poll intervals (a busy event loop or database)
# before the feed counts as behind (seconds_behind).
SYNC_SLACK = 1.0

MIGRATIONS = [
    # 1: items, the event log, the revision counter and the compaction watermark.
    """
    CREATE TABLE certgate_kv (
        key text COLLATE "C" PRIMARY KEY,
        value bytea NOT NULL,
        revision bigint NOT NULL,
        expires timestamptz
    );
    CREATE INDEX certgate_kv_expires ON certgate_kv (expires) WHERE expires IS NOT NULL;
    CREATE TABLE certgate_events (
        revision bigint PRIMARY KEY,
        key text COLLATE "C" NOT NULL,
        type text NOT NULL,
        value bytea NOT NULL,
        expires timestamptz,
        created timestamptz NOT NULL
    );
    CREATE TABLE certgate_meta (name text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO certgate_meta (name, value) VALUES ('revision', 0), ('compacted_through', 0);
    """,
]


# -- shared with the audit event store (events_postgres.py) ------------------------


def postgres_conninfo(
    conn_string: str, *, ca_file: str = "", cert_file: str = "", key_file: str = "", mode: str = ""
) -> str:
    """A libpq connection string with the `storage.tls` files added to `conn_string`.

    A CA file without a mode means verify-full: the server's certificate must chain to
    that CA and name the host dialled.
    """
    if not conn_string:
        raise BadParameter(
            'storage type "postgres" needs conn_string, e.g. "postgresql://certgate@db:5432/certgate"'
        )
    extra: dict[str, str] = {}
    if ca_file:
        extra["sslrootcert"] = ca_file
    if cert_file:
        extra["sslcert"] = cert_file
    if key_file:
        extra["sslkey"] = key_file
    if mode or ca_file:
        extra["sslmode"] = mode or "verify-full"
    try:
        given = conninfo_to_dict(conn_string)
        # Every network wait has a bound: a dead server or a silent network partition
        # fails a query (and wakes the LISTEN connection to reconnect) instead of
        # hanging. Settings in conn_string win.
        for name, value in _NETWORK_DEFAULTS.items():
            if name not in given:
                extra[name] = value
        return make_conninfo(conn_string, **extra)
    except psycopg.ProgrammingError as exc:
        raise BadParameter(f"storage conn_string is not valid: {_one_line(exc)}") from exc


_NETWORK_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # ms: unacknowledged data this long means a dead peer
}


def translate_pg_error(exc: psycopg.Error) -> CertgateError:
    """Turn a psycopg error into the certgate error a caller can act on."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        return ConnectionProblem(f"postgres store unreachable: {message}")
    if isinstance(exc, psycopg.IntegrityError | psycopg.DataError):
        return BadParameter(f"storage refused the write: {message}")
    return CertgateError(f"storage error: {message}")


async def connect(conninfo: str) -> AsyncConnection[Any]:
    """One autocommit connection in UTC; a one-line ConnectionProblem if it fails."""
    try:
        conn = await AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise ConnectionProblem(f"cannot reach the postgres store: {_one_line(exc)}") from exc
    try:
        await _configure(conn)
    except BaseException as exc:  # cancelled too: never leave the connection open
        await conn.close()
        if isinstance(exc, psycopg.Error):
            raise translate_pg_error(exc) from exc
        raise
    return conn


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


async def migrate(conn: AsyncConnection[Any], component: str, steps: Sequence[str]) -> None:
    """Bring `component`'s tables to the newest version, applying the missing steps.

    Steps are append-only: step N (1-based) moves version N-1 to N and never changes
    once released. Several processes may start at once: a transaction-scoped advisory
    lock makes them take turns, and the later ones find nothing left to do. A store
    migrated by a newer certgate is refused rather than misread.
    """
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS certgate_schema"
                " (component text PRIMARY KEY, version integer NOT NULL)"
            )
            result = await conn.execute(
                "SELECT version FROM certgate_schema WHERE component = %s", (component,)
            )
            row = await result.fetchone()
            version = int(row[0]) if row else 0
            if version > len(steps):
                raise BadParameter(
                    f"the postgres store's {component} schema is version {version}, newer than"
                    f" this certgate knows ({len(steps)}): run the newer certgate"
                )
            for number in range(version + 1, len(steps) + 1):
                await conn.execute(steps[number - 1].encode())
                log.info("postgres store: %s schema migrated to version %d", component, number)
            await conn.execute(
                "INSERT INTO certgate_schema (component, version) VALUES (%s, %s)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(steps)),
            )
            result = await conn.execute("SHOW server_encoding")
            encoding = await result.fetchone()
            if encoding is None or encoding[0] != "UTF8":
                raise BadParameter(
                    "the postgres store's database must use UTF8 encoding"
                    " (CREATE DATABASE ... ENCODING 'UTF8')"
                )
    except psycopg.Error as exc:
        raise translate_pg_error(exc) from exc


# Any fixed number: the advisory lock that serializes schema migrations.
_MIGRATION_LOCK = 0x63677465  # "cgte"


def _prefix_clause(prefixes: Sequence[str]) -> tuple[sql.Composable, list[Any]]:
    """SQL matching keys under any of `prefixes` (index ranges), and its parameters."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for prefix in prefixes:
        if prefix == "":
            return sql.SQL("true"), []
        end = prefix_end(prefix)
        if end is None:
            parts.append(sql.SQL("(key >= %s AND starts_with(key, %s))"))
            params += [prefix, prefix]
        else:
            parts.append(sql.SQL("(key >= %s AND key < %s)"))
            params += [prefix, end]
    return sql.SQL("(") + sql.SQL(" OR ").join(parts) + sql.SQL(")"), params


# PostgreSQL's timestamptz ends in year 9999 (psycopg refuses later ones); an expiry
# past it (9999-12-31T23:59:59-23:59 is in year 10000 in UTC) is stored as its last day,
# which is "never" in practice, instead of refusing the write.
LAST_STORABLE = datetime(9999, 12, 31, tzinfo=UTC)


def _stored_expiry(expires: datetime | None) -> datetime | None:
    if expires is None:
        return None
    return min(expires, LAST_STORABLE)


async def _lock_revision(conn: AsyncConnection[Any]) -> int:
    """Take the writers' lock (the counter row) and return the current revision."""
    cursor = await conn.execute(
        "SELECT value FROM certgate_meta WHERE name = 'revision' FOR UPDATE"
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _set_revision(conn: AsyncConnection[Any], revision: int) -> None:
    # NOTIFY is delivered at commit, with the new revision visible to its listeners.
    await conn.execute(
        "WITH counter AS (UPDATE certgate_meta SET value = %s WHERE name = 'revision')"
        " SELECT pg_notify(%s, %s)",
        (revision, CHANNEL, str(revision)),
    )


async def _live_revision(conn: AsyncConnection[Any], key: str, now: datetime) -> int | None:
    cursor = await conn.execute(
        "SELECT revision FROM certgate_kv WHERE key = %s AND (expires IS NULL OR expires > %s)",
        (key, now),
    )
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def _store(
    conn: AsyncConnection[Any],
    revision: int,
    item: Item,
    value: bytes,
    now: datetime,
) -> None:
    """Log a PUT at `revision` and upsert the item, in one statement."""
    await conn.execute(
        "WITH logged AS ("
        "  INSERT INTO certgate_events (revision, key, type, value, expires, created)"
        "  VALUES (%(revision)s, %(key)s, 'put', %(value)s, %(expires)s, %(now)s))"
        " INSERT INTO certgate_kv (key, value, revision, expires)"
        " VALUES (%(key)s, %(value)s, %(revision)s, %(expires)s)"
        " ON CONFLICT (key) DO UPDATE SET"
        " value = excluded.value, revision = excluded.revision, expires = excluded.expires",
        {"revision": revision, "key": item.key, "value": value,
         "expires": _stored_expiry(item.expires), "now": now},
    )  # fmt: skip


async def _log_deletes(
    conn: AsyncConnection[Any], first_revision: int, keys: Sequence[str], now: datetime
) -> None:
    """Delete `keys` and log a DELETE for each, at first_revision, first_revision+1, ..."""
    await conn.execute(
        "WITH gone AS (DELETE FROM certgate_kv WHERE key = ANY(%(keys)s))"
        " INSERT INTO certgate_events (revision, key, type, value, expires, created)"
        " SELECT %(first)s + n - 1, key, 'delete', '', NULL, %(now)s"
        " FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS doomed(key, n)",
        {"keys": list(keys), "first": first_revision, "now": now},
    )


def _item(row: Sequence[Any]) -> Item:
    key, value, revision, expires = row
    return Item(key=key, value=bytes(value), revision=int(revision), expires=expires)


def _event(row: Sequence[Any]) -> Event:
    revision, key, kind, value, expires = row
    item = Item(key=key, value=bytes(value), revision=int(revision), expires=expires)
    return Event(type=EventType(kind), item=item)


class PostgresBackend:
    """`Backend` on a PostgreSQL database; see the module docstring for how it works.

    Open it with `await PostgresBackend.open(conninfo, clock=...)`: it migrates the
    schema forward, then starts the feed and maintenance. Every instance, on any host,
    on the same database sees the same items, revisions and events.
    """

    def __init__(
        self,
        conninfo: str,
        clock: Clock | None = None,
        poll_interval: float = 1.0,
        *,
        pool_size: int = 10,
        pool_timeout: float = 10.0,
        max_events: int = 100_000,
        max_event_age: timedelta = timedelta(hours=1),
        compact_interval: float = 60.0,
        buffer_events: int = 10_000,
    ) -> None:
        if poll_interval <= 0:
            raise BadParameter(f"poll_interval must be positive, got {poll_interval}")
        if max_events < 1:
            raise BadParameter(f"max_events must be at least 1, got {max_events}")
        self._conninfo = conninfo
        self._clock: Clock = clock or SystemClock()
        self._poll_interval = poll_interval
        self._max_events = max_events
        self._max_event_age = max_event_age
        self._compact_interval = compact_interval
        self._buffer_events = buffer_events
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            configure=_configure,
            check=_check_pooled,
            timeout=pool_timeout,
            reconnect_timeout=RECONNECT_GIVE_UP,
            name="certgate-postgres",
        )
        # The feed: every event with floor < revision <= head, in order, is in _buffer.
        self._buffer: list[Event] = []
        self._floor = 0
        self._head = 0
        # The newest revision this instance knows of; watch(start_revision=0) starts here.
        self._known_revision = 0
        # The newest revision this instance wrote (and poked the feed for), so its
        # NOTIFY need not poke it again.
        self._poked_through = 0
        # Replaced after every feed read, so a watcher that took the current one before
        # looking at the buffer is woken by anything appended after.
        self._fed = asyncio.Event()
        # Set to make the feed read now (a NOTIFY, or a write through this instance).
        self._poke = asyncio.Event()
        # When the last feed read that reached the head began (monotonic): everything
        # committed before then is in the buffer.
        self._synced = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def open(
        cls,
        conninfo: str,
        clock: Clock | None = None,
        poll_interval: float = 1.0,
        **options: Any,
    ) -> PostgresBackend:
        backend = cls(conninfo, clock, poll_interval, **options)
        await backend._start()
        return backend

    async def _start(self) -> None:
        # One direct connection first: it reports a bad address, password or
        # certificate in one line, where a pool would only time out.
        async with await connect(self._conninfo) as conn:
            await migrate(conn, "kv", MIGRATIONS)
            cursor = await conn.execute("SELECT value FROM certgate_meta WHERE name = 'revision'")
            row = await cursor.fetchone()
            assert row is not None
            self._head = self._floor = self._known_revision = int(row[0])
        try:
            await self._pool.open(wait=True, timeout=10.0)
        except (psycopg.Error, PoolTimeout) as exc:
            await self._pool.close()
            raise ConnectionProblem(f"cannot reach the postgres store: {exc}") from exc
        for name, loop in (
            ("listen", self._listen),
            ("feed", self._feed),
            ("maintain", self._maintain),
        ):
            task = asyncio.create_task(loop(), name=f"certgate-postgres-{name}")
            task.add_done_callback(log_failure(log, f"postgres backend task {name}"))
            self._tasks.append(task)

    # -- connections ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; psycopg and pool errors become certgate errors."""
        if self._closed:
            raise ConnectionProblem("storage is closed")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:  # before psycopg.Error: it is an OperationalError
            # Every connection busy (or the server gone): one line, the pool's size in it.
            raise ConnectionProblem(
                f"postgres store busy or unreachable: no free connection of"
                f" {self._pool.max_size} (storage.pool_size) within {self._pool.timeout:g}s"
            ) from exc
        except psycopg.Error as exc:
            raise translate_pg_error(exc) from exc

    async def _write(self, work: Callable[[AsyncConnection[Any], int], Awaitable[int]]) -> int:
        """Run `work(conn, revision)` under the writers' lock; it returns the new revision."""
        async with self._connection() as conn, conn.transaction():
            revision = await work(conn, await _lock_revision(conn))
            await _set_revision(conn, revision)
        self._wrote(revision)
        return revision

    # -- Backend -------------------------------------------------------------------

    async def get(self, key: str) -> Item:
        found = await self.get_many([key])
        if not found:
            raise NotFound(f"key {key} is not found")
        return found[0]

    async def get_many(self, keys: Sequence[str]) -> list[Item]:
        if isinstance(keys, str):
            raise BadParameter("get_many takes a list of keys, not one string")
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT key, value, revision, expires FROM certgate_kv"
                " WHERE key = ANY(%s) AND (expires IS NULL OR expires > %s)",
                (wanted, self._clock.now()),
            )
            rows = await cursor.fetchall()
        found = {row[0]: _item(row) for row in rows}
        return [found[key] for key in keys if key in found]

    async def create(self, item: Item) -> Item:
        note_store_write()
        value = checked_value(item)
        now = self._clock.now()

        async def create(conn: AsyncConnection[Any], head: int) -> int:
            if await _live_revision(conn, item.key, now) is not None:
                raise AlreadyExists(f"key {item.key} already exists")
            await _store(conn, head + 1, item, value, now)  # replaces an expired row
            return head + 1

        return self._item(item, value, await self._write(create))

    async def put(self, item: Item) -> Item:
        """One statement, one round trip: the most frequent write (heartbeats, upserts)
        holds the writers' lock only while the server runs it, not across round trips.
        `stored` and `logged` read from `bumped`, so the counter row is locked first,
        as in every other write (no lock-order deadlock)."""
        note_store_write()
        value = checked_value(item)
        async with self._connection() as conn:
            result = await conn.execute(
                "WITH bumped AS ("
                "  UPDATE certgate_meta SET value = value + 1 WHERE name = 'revision'"
                "  RETURNING value AS revision),"
                " logged AS ("
                "  INSERT INTO certgate_events (revision, key, type, value, expires, created)"
                "  SELECT revision, %(key)s, 'put', %(value)s, %(expires)s, %(now)s FROM bumped),"
                " stored AS ("
                "  INSERT INTO certgate_kv (key, value, revision, expires)"
                "  SELECT %(key)s, %(value)s, revision, %(expires)s FROM bumped"
                "  ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                "  revision = excluded.revision, expires = excluded.expires)"
                " SELECT revision, pg_notify(%(channel)s, revision::text) FROM bumped",
                {"key": item.key, "value": value, "expires": _stored_expiry(item.expires),
                 "now": self._clock.now(), "channel": CHANNEL},
            )  # fmt: skip
            row = await result.fetchone()
        assert row is not None
        revision = int(row[0])
        self._wrote(revision)
        return self._item(item, value, revision)

    async def write_many(
        self, items: Sequence[Item], create_only: bool, deletes: Sequence[str] = ()
    ) -> list[Item]:
        """All in one transaction under the writers' lock: every item or none; with
        `create_only`, one live key among them refuses the whole batch. Then `deletes`,
        those live."""
        note_store_write()
        values = [checked_value(item) for item in items]
        now = self._clock.now()
        first: list[int] = []

        async def write(conn: AsyncConnection[Any], head: int) -> int:
            if create_only:
                for item in items:
                    if await _live_revision(conn, item.key, now) is not None:
                        raise AlreadyExists(f"key {item.key} already exists")
            for offset, (item, value) in enumerate(zip(items, values, strict=True)):
                await _store(conn, head + 1 + offset, item, value, now)
            first.append(head + 1)
            head += len(items)
            if deletes:
                cursor = await conn.execute(
                    "SELECT key FROM certgate_kv"
                    " WHERE key = ANY(%s) AND (expires IS NULL OR expires > %s)",
                    (list(dict.fromkeys(deletes)), now),
                )
                live = [key for (key,) in await cursor.fetchall()]
                await _log_deletes(conn, head + 1, live, now)
                head += len(live)
            return head

        if not items and not deletes:
            return []
        if not deletes and not create_only and len({item.key for item in items}) == len(items):
            return await self._put_many(items, values)
        await self._write(write)
        return [
            self._item(item, value, first[0] + offset)
            for offset, (item, value) in enumerate(zip(items, values, strict=True))
        ]

    async def _put_many(self, items: Sequence[Item], values: list[bytes]) -> list[Item]:
        """`put` of distinct keys, in one statement and one round trip (heartbeats in
        batches, services/batched_writer.py): revisions head+1.. in the order given."""
        async with self._connection() as conn:
            result = await conn.execute(
                "WITH bumped AS ("
                "  UPDATE certgate_meta SET value = value + %(n)s WHERE name = 'revision'"
                "  RETURNING value - %(n)s AS base),"
                " rows AS ("
                "  SELECT base + ord AS revision, key, value, expires FROM bumped,"
                "  unnest(%(keys)s::text[], %(values)s::bytea[], %(expires)s::timestamptz[])"
                "  WITH ORDINALITY AS given(key, value, expires, ord)),"
                " logged AS ("
                "  INSERT INTO certgate_events (revision, key, type, value, expires, created)"
                "  SELECT revision, key, 'put', value, expires, %(now)s FROM rows),"
                " stored AS ("
                "  INSERT INTO certgate_kv (key, value, revision, expires)"
                "  SELECT key, value, revision, expires FROM rows"
                "  ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                "  revision = excluded.revision, expires = excluded.expires)"
                " SELECT base, pg_notify(%(channel)s, (base + %(n)s)::text) FROM bumped",
                {"n": len(items), "keys": [item.key for item in items], "values": values,
                 "expires": [_stored_expiry(item.expires) for item in items],
                 "now": self._clock.now(), "channel": CHANNEL},
            )  # fmt: skip
            row = await result.fetchone()
        assert row is not None
        base = int(row[0])
        self._wrote(base + len(items))
        return [
            self._item(item, value, base + offset)
            for offset, (item, value) in enumerate(zip(items, values, strict=True), start=1)
        ]

    async def compare_and_swap(self, item: Item, expected_revision: int) -> Item:
        note_store_write()
        value = checked_value(item)
        now = self._clock.now()

        async def swap(conn: AsyncConnection[Any], head: int) -> int:
            revision = await _live_revision(conn, item.key, now)
            if revision is None:
                raise NotFound(f"key {item.key} is not found")
            if revision != expected_revision:
                raise CompareFailed(
                    f"key {item.key} changed: it is at revision {revision},"
                    f" not {expected_revision}; read it again"
                )
            await _store(conn, head + 1, item, value, now)
            return head + 1

        return self._item(item, value, await self._write(swap))

    async def delete(self, key: str) -> None:
        note_store_write()
        now = self._clock.now()

        async def delete(conn: AsyncConnection[Any], head: int) -> int:
            if await _live_revision(conn, key, now) is None:
                raise NotFound(f"key {key} is not found")
            await _log_deletes(conn, head + 1, [key], now)
            return head + 1

        await self._write(delete)

    async def delete_range(self, prefix: str) -> int:
        """Delete every item under `prefix`; returns how many were visible."""
        note_store_write()
        now = self._clock.now()
        where, params = _prefix_clause([prefix])
        live = 0

        async def delete_range(conn: AsyncConnection[Any], head: int) -> int:
            nonlocal live
            cursor = await conn.execute(
                sql.SQL("SELECT key, expires FROM certgate_kv WHERE {} ORDER BY key").format(where),
                params,
            )
            doomed = await cursor.fetchall()
            # Expired rows get their DELETE event here rather than from the reaper, so
            # watchers see each removal exactly once.
            await _log_deletes(conn, head + 1, [key for key, _ in doomed], now)
            live = sum(1 for _, expires in doomed if expires is None or expires > now)
            return head + len(doomed)

        await self._write(delete_range)
        return live

    async def range(self, prefix: str, limit: int = 0) -> list[Item]:
        if limit < 0:
            raise BadParameter(f"limit must not be negative, got {limit}")
        where, params = _prefix_clause([prefix])
        query = sql.SQL(
            "SELECT key, value, revision, expires FROM certgate_kv"
            " WHERE {} AND (expires IS NULL OR expires > %s) ORDER BY key LIMIT %s"
        ).format(where)
        async with self._connection() as conn:
            cursor = await conn.execute(query, [*params, self._clock.now(), limit or None])
            rows = await cursor.fetchall()
        return [_item(row) for row in rows]

    async def current_revision(self) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT value FROM certgate_meta WHERE name = 'revision'")
            row = await cursor.fetchone()
        assert row is not None
        self._known_revision = max(self._known_revision, int(row[0]))
        return int(row[0])

    def watch(self, prefixes: Sequence[str], start_revision: int = 0) -> AsyncIterator[Event]:
        """Events under `prefixes` after `start_revision`, in revision order.

        start_revision=0 starts after the newest revision this instance knows of: its
        own writes, and others' as its feed has read them. To follow a state read with
        `range`, take `current_revision()` before the read and watch from there.
        """
        checked = watched_prefixes(prefixes, start_revision)
        return self._watch(checked, start_revision or self._known_revision)

    def seconds_behind(self) -> float:
        """0 while the feed reads on schedule (every poll interval, or on a NOTIFY);
        else the age of its last complete read: an auth cut off from the database
        keeps serving its watchers, but what other instances wrote since is missing."""
        age = time.monotonic() - self._synced
        return age if age > 2 * self._poll_interval + SYNC_SLACK else 0.0

    async def catch_up(self, timeout: float) -> bool:
        """Have the feed read the log through now (not at its next poll or retry),
        and wait for that; False if it could not within `timeout`. Watchers woken by
        that read run before the caller resumes (they waited on it first)."""
        asked = time.monotonic()
        self._poke.set()
        try:
            async with asyncio.timeout(timeout):
                while self._synced < asked and not self._closed:
                    await self._fed.wait()
        except TimeoutError:
            return False
        return self._synced >= asked

    async def close(self) -> None:
        """Stop the feed and maintenance, end every watch, close the connections."""
        if self._closed:
            return
        self._closed = True
        self._publish()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._pool.close()

    # -- watch ----------------------------------------------------------------------

    async def _watch(self, prefixes: tuple[str, ...], cursor: int) -> AsyncIterator[Event]:
        while not self._closed:
            fed = self._fed  # taken before looking, so nothing appended after is missed
            if cursor >= self._floor:
                # Served from the feed's buffer: the events after cursor up to head.
                head = self._head
                start = bisect.bisect_right(self._buffer, cursor, key=_revision)
                pending = self._buffer[start:]
                for event in pending:
                    if event.item.key.startswith(prefixes):
                        yield event
                cursor = max(cursor, head)
                await fed.wait()
                continue
            # Behind the buffer: read the log directly until caught up.
            try:
                events, head = await self._read_log(prefixes, cursor)
            except ConnectionProblem:
                if self._closed:
                    return
                raise
            for event in events:
                cursor = event.item.revision
                yield event
            if len(events) < _BATCH:
                cursor = max(cursor, head)

    async def _read_log(self, prefixes: Sequence[str], cursor: int) -> tuple[list[Event], int]:
        """Up to _BATCH events after `cursor` under `prefixes`, and the head revision,
        from one snapshot. CompareFailed if the events after `cursor` were compacted.

        One statement, so one round trip and one snapshot: the feed runs this on every
        write it hears of, and as a transaction (BEGIN, SET, two SELECTs, COMMIT) it
        was five round trips holding a pooled connection, which at 10,000 nodes the
        heartbeats were waiting for."""
        where, params = _prefix_clause(prefixes)
        query = sql.SQL(
            "SELECT meta.head, meta.compacted, e.revision, e.key, e.type, e.value, e.expires"
            " FROM (SELECT max(value) FILTER (WHERE name = 'revision') AS head,"
            " max(value) FILTER (WHERE name = 'compacted_through') AS compacted"
            " FROM certgate_meta) AS meta"
            " LEFT JOIN LATERAL (SELECT revision, key, type, value, expires"
            " FROM certgate_events WHERE revision > %s AND revision <= meta.head AND {}"
            " ORDER BY revision LIMIT %s) AS e ON true ORDER BY e.revision"
        ).format(where)
        async with self._connection() as conn:
            result = await conn.execute(query, [cursor, *params, _BATCH])
            rows = await result.fetchall()
        head, compacted = int(rows[0][0]), int(rows[0][1])
        if cursor < compacted:
            raise CompareFailed(
                f"watch revision {cursor} too old: events up to {compacted} were"
                " compacted; read the current state and watch again"
            )
        return [_event(row[2:]) for row in rows if row[2] is not None], head

    # -- feed -------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Hold a LISTEN connection; every NOTIFY pokes the feed. Reconnects with backoff."""
        failures = 0
        while not self._closed:
            try:
                async with await connect(self._conninfo) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    # Anything written while we were not listening is read now.
                    self._poke.set()
                    async for notice in conn.notifies():
                        seen = max(self._head, self._poked_through)
                        if _notified_revision(notice.payload) > seen:
                            self._poke.set()
            except (psycopg.Error, CertgateError) as exc:
                if self._closed:
                    return
                failures += 1
                delay = _backoff(failures)
                log.warning("postgres listen connection lost, again in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)

    async def _feed(self) -> None:
        """Read new events into the buffer when poked, and every poll_interval anyway.
        After a failure it waits its backoff, or less if poked: a NOTIFY, a write that
        went through or a `catch_up` says the database answers again."""
        failures = 0
        wait = self._poll_interval
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._poke.wait()
            self._poke.clear()
            try:
                await self._read_feed()
                failures = 0
                wait = self._poll_interval
            except Exception as exc:
                if self._closed:
                    return
                failures += 1
                wait = _backoff(failures)
                log.warning(
                    "postgres watch feed failed, again in %.1fs: %s",
                    wait,
                    exc,
                    exc_info=not isinstance(exc, CertgateError),
                )

    async def _read_feed(self) -> None:
        started = time.monotonic()
        while True:
            try:
                events, head = await self._read_log([""], self._head)
            except CompareFailed:
                # What happened since our head was compacted away: start the buffer
                # afresh. Watchers still behind it read the log and are told to reload.
                revision = await self.current_revision()
                self._buffer, self._floor, self._head = [], revision, revision
                self._synced = started
                self._publish()
                return
            if events:
                self._buffer.extend(events)
                self._head = events[-1].item.revision
            if len(events) < _BATCH:
                self._head = max(self._head, head)
            if len(self._buffer) > 2 * self._buffer_events:
                dropped = self._buffer[: -self._buffer_events]
                self._buffer = self._buffer[-self._buffer_events :]
                self._floor = dropped[-1].item.revision
            self._known_revision = max(self._known_revision, self._head)
            if len(events) < _BATCH:
                self._synced = started
                self._publish()
                return
            self._publish()

    def _publish(self) -> None:
        self._fed.set()
        self._fed = asyncio.Event()

    def _wrote(self, revision: int) -> None:
        self._known_revision = max(self._known_revision, revision)
        # Set after the commit: a feed read starts after it and sees `revision`.
        self._poked_through = max(self._poked_through, revision)
        self._poke.set()

    def _item(self, item: Item, value: bytes, revision: int) -> Item:
        return Item(key=item.key, value=value, revision=revision, expires=item.expires)

    # -- maintenance ----------------------------------------------------------------

    async def _maintain(self) -> None:
        """Reap expired items every poll interval; compact every compact_interval."""
        next_compaction = time.monotonic() + self._compact_interval
        failures = 0
        while not self._closed:
            delay = self._poll_interval
            try:
                if await self.reap() == _BATCH:
                    delay = 0  # more to reap: go on at once
                if time.monotonic() >= next_compaction:
                    await self.compact()
                    next_compaction = time.monotonic() + self._compact_interval
                failures = 0
            except Exception as exc:
                if self._closed:
                    return
                failures += 1
                delay = _backoff(failures, self._poll_interval)
                log.warning(
                    "postgres maintenance failed, again in %.1fs: %s",
                    delay,
                    exc,
                    exc_info=not isinstance(exc, CertgateError),
                )
            await asyncio.sleep(delay)

    async def reap(self) -> int:
        """Delete up to _BATCH expired items, logging DELETE events; returns how many."""
        now = self._clock.now()
        expired = "SELECT key FROM certgate_kv WHERE expires IS NOT NULL AND expires <= %s"
        async with self._connection() as conn:
            cursor = await conn.execute(f"{expired} LIMIT 1", (now,))
            if await cursor.fetchone() is None:  # the common case: no lock taken
                return 0
        count = 0

        async def reap(conn: AsyncConnection[Any], head: int) -> int:
            nonlocal count
            # Read again under the lock: another instance may have reaped them.
            cursor = await conn.execute(f"{expired} ORDER BY key LIMIT {_BATCH}", (now,))
            keys = [key for (key,) in await cursor.fetchall()]
            await _log_deletes(conn, head + 1, keys, now)
            count = len(keys)
            return head + count

        await self._write(reap)
        return count

    async def compact(self) -> int:
        """Drop old events from the log now; returns how many were dropped."""
        oldest_kept = self._clock.now() - self._max_event_age
        async with self._connection() as conn, conn.transaction():
            head = await _lock_revision(conn)
            cursor = await conn.execute(
                "SELECT value FROM certgate_meta WHERE name = 'compacted_through'"
            )
            row = await cursor.fetchone()
            assert row is not None
            watermark = int(row[0])
            cursor = await conn.execute(
                "SELECT revision FROM certgate_events WHERE revision > %s AND created >= %s"
                " ORDER BY revision LIMIT 1",
                (watermark, oldest_kept),
            )
            young = await cursor.fetchone()
            cut = max(head - self._max_events, (int(young[0]) - 1) if young else head)
            if cut <= watermark:
                return 0
            dropped = await conn.execute("DELETE FROM certgate_events WHERE revision <= %s", (cut,))
            await conn.execute(
                "UPDATE certgate_meta SET value = %s WHERE name = 'compacted_through'", (cut,)
            )
            return dropped.rowcount


def _notified_revision(payload: str) -> int:
    """The revision a NOTIFY carries (the writer's new head). One the feed has read, or
    this instance wrote (its commit poked the feed, `_wrote`), needs no read of its
    own: the NOTIFY of an instance's own write, arriving after that poke, read the log
    a second time for nothing, one query more per heartbeat batch. Unreadable: read
    (a writer that sends something else must still wake the feed)."""
    try:
        return int(payload)
    except ValueError:
        return 1 << 62


def _revision(event: Event) -> int:
    return event.item.revision


def _backoff(failures: int, base: float = 0.5) -> float:
    """Exponential, capped at 10 s, with jitter so instances do not retry in step."""
    return float(min(10.0, base * 2 ** min(failures, 10)) * random.uniform(0.5, 1.5))


async def _check_pooled(conn: AsyncConnection[Any]) -> None:
    """The pool's check of a connection it hands out (raises if it is broken).

    A round trip only when the idle connection has something to read, or libpq knows
    it is broken: a server that ends a connection (restart, `pg_terminate_backend`,
    idle timeout) sends an error and closes it, and an idle pooled connection has
    nothing else to read (notifications come on the LISTEN connection, not these).
    A round trip on every checkout (psycopg_pool's check_connection) was one more
    query for each heartbeat batch and each watch feed read: at 10,000 nodes on
    PostgreSQL, a twentieth of auth's core with the server on the same core."""
    if not conn.closed:
        waiting = select.poll()
        waiting.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        if not waiting.poll(0):
            return
    await AsyncConnectionPool.check_connection(conn)


async def _configure(conn: AsyncConnection[Any]) -> None:
    # Times come back in UTC; no statement (a write queued behind the writers' lock
    # included) waits longer than 30 s.
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute("SET statement_timeout = '30s'")
