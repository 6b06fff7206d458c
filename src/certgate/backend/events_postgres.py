"""The audit event store on PostgreSQL: one log that every auth process writes and searches.

Same model as the SQLite store (events_sqlite.py): the whole event as JSON, the fields
searches filter on copied into columns, `time` in microseconds since the epoch:

    certgate_audit_events(id identity, time, event, code, uid UNIQUE, "user", node, data)
    indexes: (time, id), (event, time, id), ("user", time, id), (node, time, id)

Every index ends in (time, id), so a page is one ordered range scan of one index,
stopped after `limit` rows: a search costs the same with a thousand events or a
million (see docs/deployment.md for the measurement). Pages are keyset-paginated on
(time, id), so paging never skips or repeats an event while others are appended.

A batch is one INSERT ... SELECT FROM unnest(...), in the batch's order (ids follow
it, so ties keep append order); a uid already stored is skipped (ON CONFLICT DO
NOTHING), so an emitter that retries never logs an event twice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from certgate.backend.events import (
    check_search,
    decode_cursor,
    encode_cursor,
    event_row,
    to_micros,
)
from certgate.backend.postgres import connect, migrate, translate_pg_error
from certgate.errors import ConnectionProblem

MIGRATIONS = [
    # 1: the events, and one index per way of searching them.
    """
    CREATE TABLE certgate_audit_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time bigint NOT NULL,
        event text NOT NULL,
        code text NOT NULL,
        uid text NOT NULL UNIQUE,
        "user" text,
        node text,
        data text NOT NULL
    );
    CREATE INDEX certgate_audit_events_time ON certgate_audit_events (time, id);
    CREATE INDEX certgate_audit_events_event ON certgate_audit_events (event, time, id);
    CREATE INDEX certgate_audit_events_user ON certgate_audit_events ("user", time, id);
    CREATE INDEX certgate_audit_events_node ON certgate_audit_events (node, time, id);
    """,
]

_INSERT = (
    'INSERT INTO certgate_audit_events (time, event, code, uid, "user", node, data)'
    ' SELECT time, event, code, uid, "user", node, data FROM unnest('
    "%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]"
    ') WITH ORDINALITY AS batch(time, event, code, uid, "user", node, data, n)'
    " ORDER BY n ON CONFLICT (uid) DO NOTHING RETURNING uid"
)


class PostgresEventStore:
    """Audit events in PostgreSQL. Open with `await PostgresEventStore.open(conninfo)`."""

    def __init__(self, conninfo: str, *, pool_size: int = 5) -> None:
        self._conninfo = conninfo
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            timeout=10.0,
            name="certgate-postgres-events",
        )

    @classmethod
    async def open(cls, conninfo: str, *, pool_size: int = 5) -> PostgresEventStore:
        store = cls(conninfo, pool_size=pool_size)
        async with await connect(conninfo) as conn:
            await migrate(conn, "audit_events", MIGRATIONS)
        try:
            await store._pool.open(wait=True, timeout=10.0)
        except (psycopg.Error, PoolTimeout) as exc:
            await store._pool.close()
            raise ConnectionProblem(f"cannot reach the postgres store: {exc}") from exc
        return store

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise translate_pg_error(exc) from exc
        except PoolTimeout as exc:
            raise ConnectionProblem(f"postgres store unreachable: {exc}") from exc

    async def append(self, event: Mapping[str, Any]) -> None:
        """Store one event; an event whose uid is already stored is ignored."""
        await self.append_many([event])

    async def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[bool]:
        """Store many events in one statement: all of them, or none. For each, whether
        it was stored now (False: its uid was stored before, or earlier in the batch)."""
        rows = [event_row(event) for event in events]
        if not rows:
            return []
        columns = [list(column) for column in zip(*rows, strict=True)]
        async with self._connection() as conn:
            result = await conn.execute(_INSERT, columns)
            inserted = {uid for (uid,) in await result.fetchall()}
        new: list[bool] = []
        for row in rows:
            uid = row[3]
            new.append(uid in inserted)
            inserted.discard(uid)  # a second copy in the same batch was not stored
        return new

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
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of events; see `certgate.backend.events.EventStore`."""
        check_search(order, event_types, limit)

        conditions: list[sql.Composable] = []
        params: list[Any] = []
        if since is not None:
            conditions.append(sql.SQL("time >= %s"))
            params.append(to_micros(since, "since"))
        if until is not None:
            conditions.append(sql.SQL("time < %s"))
            params.append(to_micros(until, "until"))
        if user is not None:
            conditions.append(sql.SQL('"user" = %s'))
            params.append(user)
        if node is not None:
            conditions.append(sql.SQL("node = %s"))
            params.append(node)
        if cursor is not None:
            after_time, after_id = decode_cursor(cursor, order)
            # A row comparison on (time, id): the trailing columns of every index.
            sign = "<" if order == "desc" else ">"
            conditions.append(sql.SQL(f"(time, id) {sign} (%s, %s)"))
            params += [after_time, after_id]

        direction = sql.SQL("DESC" if order == "desc" else "ASC")
        ordering = sql.SQL("ORDER BY time {d}, id {d} LIMIT %s").format(d=direction)
        fetch = limit + 1  # one more than asked for tells whether another page follows
        types = sorted(set(event_types))
        query: sql.Composable
        if not types:
            where = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")
            query = sql.SQL("SELECT id, time, data FROM certgate_audit_events WHERE {} {}").format(
                where, ordering
            )
            args = [*params, fetch]
        else:
            # One ordered, limited index scan per type, merged: `event = ANY(...)` would
            # make PostgreSQL sort every match before applying the limit.
            parts: list[sql.Composable] = []
            args = []
            for kind in types:
                where = sql.SQL(" AND ").join([sql.SQL("event = %s"), *conditions])
                parts.append(
                    sql.SQL(
                        "(SELECT id, time, data FROM certgate_audit_events WHERE {} {})"
                    ).format(where, ordering)
                )
                args += [kind, *params, fetch]
            query = sql.SQL("SELECT id, time, data FROM ({}) AS merged {}").format(
                sql.SQL(" UNION ALL ").join(parts), ordering
            )
            args.append(fetch)

        async with self._connection() as conn:
            result = await conn.execute(query, args)
            rows = await result.fetchall()
        page = rows[:limit]
        events = [json.loads(data) for _, _, data in page]
        next_cursor = None
        if len(rows) > limit:
            last_id, last_time, _ = page[-1]
            next_cursor = encode_cursor(last_time, last_id, order)
        return events, next_cursor

    async def close(self) -> None:
        await self._pool.close()
