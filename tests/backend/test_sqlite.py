"""The SQLite backend: the compliance suite, plus what only SQLite has (compaction,
the file itself, lock waits) and the registry that picks it."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from certgate.backend.base import Item
from certgate.backend.events_sqlite import SQLiteEventStore
from certgate.backend.registry import open_backend, open_event_store
from certgate.backend.sqlite import SQLiteBackend
from certgate.clock import FakeClock
from certgate.errors import (
    BadParameter,
    CertgateError,
    CompareFailed,
    ConnectionProblem,
    NotFound,
)

from .conftest import BackendTarget
from .suite import BackendSuite, assert_quiet, next_events, watching


class TestSQLiteBackend(BackendSuite):
    @pytest.fixture
    def backend_target(self, tmp_path: Path) -> BackendTarget:
        # A short poll interval keeps the cross-process tests quick.
        return BackendTarget({"type": "sqlite", "poll_interval": 0.01}, tmp_path)


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = await SQLiteBackend.open(tmp_path / "backend.db")
    yield backend
    await backend.close()


@pytest.fixture
async def small_log(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteBackend]:
    backend = await SQLiteBackend.open(
        tmp_path / "backend.db",
        clock=clock,
        poll_interval=0.01,
        max_events=5,
        max_event_age=timedelta(minutes=10),
    )
    yield backend
    await backend.close()


async def test_compaction_keeps_the_newest_events(small_log: SQLiteBackend) -> None:
    written = [await small_log.put(Item(f"/k/{n}", b"v")) for n in range(12)]
    assert await small_log.compact() == 7
    assert await small_log.compact() == 0
    async with watching(small_log, ["/k/"], written[6].revision) as events:
        assert [event.item for event in await next_events(events, 5)] == written[7:]
    with pytest.raises(CompareFailed):
        async with watching(small_log, ["/k/"], written[5].revision) as events:
            await anext(events)
    # Items themselves are untouched.
    assert len(await small_log.range("/k/")) == 12


async def test_compaction_drops_old_events(small_log: SQLiteBackend, clock: FakeClock) -> None:
    old = await small_log.put(Item("/k/old", b"v"))
    clock.advance(timedelta(minutes=11))
    new = await small_log.put(Item("/k/new", b"v"))
    assert await small_log.compact() == 1
    async with watching(small_log, ["/k/"], old.revision) as events:
        assert [event.item for event in await next_events(events, 1)] == [new]
        await assert_quiet(events)


async def test_file_is_private_and_in_wal_mode(
    sqlite_backend: SQLiteBackend, tmp_path: Path
) -> None:
    await sqlite_backend.put(Item("/k", b"v"))
    for name in ("backend.db", "backend.db-wal", "backend.db-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    conn = sqlite3.connect(tmp_path / "backend.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_busy_lock_fails_without_stalling_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "backend.db"
    backend = await SQLiteBackend.open(path, busy_timeout=0.3)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(ConnectionProblem):
            await backend.put(Item("/k", b"v"))
        ticker.cancel()
        assert ticks >= 10  # the loop kept running while the write waited ~0.3 s
        holder.execute("ROLLBACK")
        assert (await backend.put(Item("/k", b"v"))).revision > 0
    finally:
        holder.close()
        await backend.close()


class _BusyConnection:
    """Stands for the loop's read connection at a moment it would have to wait."""

    def execute(self, *args: object) -> None:
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
        raise error


async def test_a_read_that_would_wait_goes_to_the_worker(
    sqlite_backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads of single keys run on the event loop's own connection, which never waits;
    # a read that would have to wait for a lock is handed to the worker thread instead.
    stored = await sqlite_backend.put(Item("/k", b"v"))
    assert await sqlite_backend.get("/k") == stored
    monkeypatch.setattr(sqlite_backend, "_reader", _BusyConnection())
    assert await sqlite_backend.get("/k") == stored
    assert await sqlite_backend.get_many(["/k", "/missing"]) == [stored]
    with pytest.raises(NotFound):
        await sqlite_backend.get("/missing")


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backend.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CertgateError, match="cannot open storage"):
        await SQLiteBackend.open(path)


async def test_closed_backend_refuses_calls(sqlite_backend: SQLiteBackend) -> None:
    await sqlite_backend.close()
    with pytest.raises(ConnectionProblem):
        await sqlite_backend.get("/k")


# -- registry ---------------------------------------------------------------------


async def test_registry_opens_sqlite_by_default(tmp_path: Path) -> None:
    backend = await open_backend({}, tmp_path)
    try:
        assert isinstance(backend, SQLiteBackend)
        assert backend.path == tmp_path / "backend.db"
    finally:
        await backend.close()
    store = await open_event_store({"type": "sqlite"}, tmp_path)
    try:
        assert isinstance(store, SQLiteEventStore)
        assert store.path == tmp_path / "events.db"
    finally:
        await store.close()


async def test_registry_refuses_other_types(tmp_path: Path) -> None:
    with pytest.raises(BadParameter, match="etcd"):
        await open_backend({"type": "etcd"}, tmp_path)
    with pytest.raises(BadParameter, match="etcd"):
        await open_event_store({"type": "etcd"}, tmp_path)
    # postgres is known, and says what it lacks.
    with pytest.raises(BadParameter, match="needs conn_string"):
        await open_backend({"type": "postgres"}, tmp_path)
