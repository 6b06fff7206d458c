"""The SQLite audit event store: append, filters, order and paging."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.backend.events_sqlite import SQLiteEventStore
from certgate.errors import BadParameter

START = datetime(2030, 1, 1, tzinfo=UTC)
TYPES = ("session.start", "session.end", "user.login")
USERS = ("alice", "bob", "carol", None)
NODES = ("db-1", "web-1", None)


def make_event(n: int, at: datetime | None = None) -> dict[str, Any]:
    """Event number n; every fourth shares its time with the one before, to test ties."""
    moment = at or START + timedelta(seconds=n - n % 4 // 3)
    event: dict[str, Any] = {
        "event": TYPES[n % 3],
        "code": f"T{n % 3}000I",
        "time": moment.isoformat().replace("+00:00", "Z"),
        "uid": f"uid-{n:05d}",
        "n": n,
    }
    if USERS[n % 4] is not None:
        event["user"] = USERS[n % 4]
    if NODES[n % 3] is not None:
        event["node"] = NODES[n % 3]
    return event


ALL = [make_event(n) for n in range(120)]


def numbers(events: list[dict[str, Any]]) -> list[int]:
    return [event["n"] for event in events]


def newest_first(events: list[dict[str, Any]]) -> list[int]:
    """The order the store must return: by time, ties by insertion, newest first."""
    return [e["n"] for e in sorted(events, key=lambda e: (e["time"], e["n"]), reverse=True)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    opened = await SQLiteEventStore.open(tmp_path / "events.db")
    yield opened
    await opened.close()


@pytest.fixture
async def loaded(store: SQLiteEventStore) -> SQLiteEventStore:
    await store.append_many(ALL[:100])
    for event in ALL[100:]:
        await store.append(event)
    return store


async def page_through(store: SQLiteEventStore, limit: int, **filters: Any) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(1000):
        page, cursor = await store.search(limit=limit, cursor=cursor, **filters)
        assert page, "a page before the last one is never empty"
        assert len(page) <= limit
        seen += numbers(page)
        if cursor is None:
            return seen
    raise AssertionError("paging never ended")


async def test_newest_first_by_default(loaded: SQLiteEventStore) -> None:
    page, cursor = await loaded.search(limit=10)
    assert numbers(page) == newest_first(ALL)[:10]
    assert cursor is not None
    assert page[0] == ALL[119]  # events come back exactly as stored


async def test_oldest_first(loaded: SQLiteEventStore) -> None:
    page, _ = await loaded.search(limit=10, order="asc")
    assert numbers(page) == newest_first(ALL)[::-1][:10]


async def test_filters(loaded: SQLiteEventStore) -> None:
    cases: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        ({"event_types": ["user.login"]}, [e for e in ALL if e["event"] == "user.login"]),
        (
            {"event_types": ["user.login", "session.end", "no.such"]},
            [e for e in ALL if e["event"] in ("user.login", "session.end")],
        ),
        ({"user": "bob"}, [e for e in ALL if e.get("user") == "bob"]),
        ({"node": "web-1"}, [e for e in ALL if e.get("node") == "web-1"]),
        (
            {"event_types": ["session.start"], "user": "alice", "node": "db-1"},
            [
                e
                for e in ALL
                if e["event"] == "session.start"
                and e.get("user") == "alice"
                and e.get("node") == "db-1"
            ],
        ),
        ({"user": "nobody"}, []),
    ]
    for filters, expected in cases:
        page, cursor = await loaded.search(limit=1000, **filters)
        assert numbers(page) == newest_first(expected), filters
        assert cursor is None


async def test_time_window_is_half_open(loaded: SQLiteEventStore) -> None:
    since, until = START + timedelta(seconds=10), START + timedelta(seconds=20)
    page, _ = await loaded.search(since=since, until=until, limit=1000)
    expected = [e for e in ALL if since <= datetime.fromisoformat(e["time"]) < until]
    assert expected
    assert numbers(page) == newest_first(expected)


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"event_types": ["user.login", "session.end"]}, {"user": "alice"}],
    ids=["all", "types", "user"],
)
@pytest.mark.parametrize("limit", [1, 7, 40])
async def test_paging_has_no_gaps_or_repeats(
    loaded: SQLiteEventStore, order: str, filters: dict[str, Any], limit: int
) -> None:
    everything, cursor = await loaded.search(limit=1000, order=order, **filters)
    assert cursor is None
    assert await page_through(loaded, limit, order=order, **filters) == numbers(everything)


async def test_paging_ignores_events_appended_meanwhile(loaded: SQLiteEventStore) -> None:
    first, cursor = await loaded.search(limit=50)
    # A newer event does not shift the pages of a newest-first walk.
    await loaded.append(make_event(500, at=START + timedelta(days=1)))
    rest = await page_through_from(loaded, cursor)
    assert numbers(first) + rest == newest_first(ALL)


async def page_through_from(store: SQLiteEventStore, cursor: str | None) -> list[int]:
    seen: list[int] = []
    while cursor is not None:
        page, cursor = await store.search(limit=30, cursor=cursor)
        seen += numbers(page)
    return seen


async def test_last_page_that_fits_exactly_has_no_cursor(store: SQLiteEventStore) -> None:
    await store.append_many(ALL[:10])
    page, cursor = await store.search(limit=10)
    assert len(page) == 10
    assert cursor is None
    assert await store.search(limit=10, until=START) == ([], None)


async def test_the_same_uid_is_stored_once(store: SQLiteEventStore) -> None:
    await store.append(ALL[0])
    await store.append_many([ALL[0], ALL[1]])
    page, _ = await store.search()
    assert numbers(page) == [1, 0]


async def test_times_with_offsets_sort_by_instant(store: SQLiteEventStore) -> None:
    later = {**ALL[0], "uid": "later", "time": "2030-01-01T01:00:00.000001+01:00"}
    earlier = {**ALL[1], "uid": "earlier", "time": "2029-12-31T23:59:59.999999Z"}
    await store.append_many([later, earlier])
    page, _ = await store.search(order="asc")
    assert [e["uid"] for e in page] == ["earlier", "later"]


@pytest.mark.parametrize(
    "change",
    [
        {"event": None},
        {"uid": ""},
        {"time": "yesterday"},
        {"time": "2030-01-01T00:00:00"},  # no timezone
        {"user": 7},
        {"extra": object()},
    ],
)
async def test_malformed_events_are_refused(
    store: SQLiteEventStore, change: dict[str, Any]
) -> None:
    event = {**ALL[0], **change}
    with pytest.raises(BadParameter):
        await store.append(event)
    assert await store.search() == ([], None)


async def test_bad_search_arguments_are_refused(loaded: SQLiteEventStore) -> None:
    _, cursor = await loaded.search(limit=5)
    assert cursor is not None
    bad: list[dict[str, Any]] = [
        {"cursor": "not a cursor"},
        {"cursor": cursor, "order": "asc"},
        {"limit": 0},
        {"order": "sideways"},
        {"since": datetime(2030, 1, 1)},  # no timezone
        {"event_types": "user.login"},
    ]
    for arguments in bad:
        with pytest.raises(BadParameter):
            await loaded.search(**arguments)


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


async def test_append_many_says_which_events_are_new(store: SQLiteEventStore) -> None:
    # A service resending a batch it never heard was stored: the copies are not stored.
    assert await store.append_many(ALL[:3]) == [True, True, True]
    changed = {**ALL[1], "n": 999}
    assert await store.append_many([ALL[2], ALL[3], changed]) == [False, True, False]
    events, _ = await store.search(order="asc")
    assert numbers(events) == [0, 1, 2, 3]
