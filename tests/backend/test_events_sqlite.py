"""The SQLite audit event store: the event store suite, plus its own write path (appends
on the event loop's connection, checkpoints on the worker) and write-ahead log size."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.backend.events import EventStore
from certgate.backend.events_sqlite import SQLiteEventStore

from .events_suite import ALL, NODES, START, TYPES, USERS, EventStoreSuite, make_event, numbers


@pytest.fixture
def event_store_opener(tmp_path: Path) -> Callable[[], Awaitable[EventStore]]:
    async def open_store() -> EventStore:
        return await SQLiteEventStore.open(tmp_path / "events.db")

    return open_store


class TestSQLiteEventStore(EventStoreSuite):
    pass


async def test_an_append_that_would_wait_waits_on_the_worker_not_the_loop(
    tmp_path: Path,
) -> None:
    # Appends run on the event loop's own connection when they need not wait; while
    # another process holds the write lock they go to the worker thread, which waits,
    # and the loop keeps serving.
    path = tmp_path / "events.db"
    store = await SQLiteEventStore.open(path, busy_timeout=5.0)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        await store.append(ALL[0])  # inline
        holder.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def release() -> None:
            await asyncio.sleep(0.3)
            holder.execute("COMMIT")

        ticker = asyncio.create_task(tick())
        releaser = asyncio.create_task(release())
        await store.append_many(ALL[1:3])
        await releaser
        ticker.cancel()
        assert ticks >= 10  # the loop kept running while the append waited ~0.3 s
        await store.append(ALL[3])  # inline again
        events, _ = await store.search(limit=10, order="asc")
        assert numbers(events) == [0, 1, 2, 3]
    finally:
        holder.close()
        await store.close()


async def test_the_log_of_inline_appends_is_checkpointed_and_reused(tmp_path: Path) -> None:
    # Appends on the loop's connection never checkpoint (that syncs to disk); every so
    # many, one goes to the worker and checkpoints, so the write-ahead log stops growing.
    store = await SQLiteEventStore.open(tmp_path / "events.db")
    wal = tmp_path / "events.db-wal"
    try:
        for n in range(250):
            await store.append(make_event(n))
        after_250 = wal.stat().st_size
        for n in range(250, 1250):
            await store.append(make_event(n))
        assert wal.stat().st_size < 2 * after_250  # not five times as large
        events, _ = await store.search(limit=10_000)
        assert len(events) == 1250
    finally:
        await store.close()


async def test_the_log_stays_bounded_during_a_bulk_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bulk load appends large batches on the loop's connection; counting appends
    # alone let 200 of them grow the log past the database itself (~3 GB for a million
    # events). The log is checkpointed by size too, and truncated when it starts over.
    store = await SQLiteEventStore.open(tmp_path / "events.db")
    wal = tmp_path / "events.db-wal"
    total, batch = 200_000, 1000
    largest = 0
    # Checkpoints (on the worker) stay occasional: the truncated log must not by its
    # size alone call for the next one, sending every append through the worker.
    worker_calls = 0
    worker_run = store._db.run

    async def counted(fn: Any) -> Any:
        nonlocal worker_calls
        worker_calls += 1
        return await worker_run(fn)

    monkeypatch.setattr(store._db, "run", counted)
    try:
        for start in range(0, total, batch):
            await store.append_many(
                {
                    "event": TYPES[n % 3],
                    "code": "T2000I",
                    "time": (START + timedelta(milliseconds=n)).isoformat(),
                    "uid": f"bulk-{n:07d}",
                    "user": USERS[n % 3],
                    "node": NODES[n % 2],
                }
                for n in range(start, start + batch)
            )
            largest = max(largest, wal.stat().st_size)
        assert worker_calls <= total // batch // 10
        events, _ = await store.search(limit=1, order="asc")
        assert events[0]["uid"] == "bulk-0000000"
        events, _ = await store.search(limit=1)
        assert events[0]["uid"] == f"bulk-{total - 1:07d}"
    finally:
        await store.close()
    # 16 MiB between checkpoints, plus the transaction that crossed the line.
    assert largest < 24 * 1024 * 1024, f"the log grew to {largest} bytes"
    assert (tmp_path / "events.db").stat().st_size > 16 * 1024 * 1024  # it was a load
