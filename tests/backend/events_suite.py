"""The compliance suite every audit `EventStore` must pass: append, filters, order, paging.

A store's test module subclasses `EventStoreSuite` and supplies `event_store_opener`
(see conftest.py): a coroutine that opens an instance on a fresh store, the same store
every time it is called within one test.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from certgate.backend.events import EventStore
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


async def page_through(store: EventStore, limit: int, **filters: Any) -> list[int]:
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


async def page_through_from(store: EventStore, cursor: str | None) -> list[int]:
    seen: list[int] = []
    while cursor is not None:
        page, cursor = await store.search(limit=30, cursor=cursor)
        seen += numbers(page)
    return seen


class EventStoreSuite:
    async def test_newest_first_by_default(self, loaded: EventStore) -> None:
        page, cursor = await loaded.search(limit=10)
        assert numbers(page) == newest_first(ALL)[:10]
        assert cursor is not None
        assert page[0] == ALL[119]  # events come back exactly as stored

    async def test_oldest_first(self, loaded: EventStore) -> None:
        page, _ = await loaded.search(limit=10, order="asc")
        assert numbers(page) == newest_first(ALL)[::-1][:10]

    async def test_filters(self, loaded: EventStore) -> None:
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

    async def test_time_window_is_half_open(self, loaded: EventStore) -> None:
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
        self, loaded: EventStore, order: str, filters: dict[str, Any], limit: int
    ) -> None:
        everything, cursor = await loaded.search(limit=1000, order=order, **filters)
        assert cursor is None
        assert await page_through(loaded, limit, order=order, **filters) == numbers(everything)

    async def test_paging_ignores_events_appended_meanwhile(self, loaded: EventStore) -> None:
        first, cursor = await loaded.search(limit=50)
        # A newer event does not shift the pages of a newest-first walk.
        await loaded.append(make_event(500, at=START + timedelta(days=1)))
        rest = await page_through_from(loaded, cursor)
        assert numbers(first) + rest == newest_first(ALL)

    async def test_last_page_that_fits_exactly_has_no_cursor(self, store: EventStore) -> None:
        await store.append_many(ALL[:10])
        page, cursor = await store.search(limit=10)
        assert len(page) == 10
        assert cursor is None
        assert await store.search(limit=10, until=START) == ([], None)

    async def test_the_same_uid_is_stored_once(self, store: EventStore) -> None:
        await store.append(ALL[0])
        await store.append_many([ALL[0], ALL[1]])
        page, _ = await store.search()
        assert numbers(page) == [1, 0]

    async def test_times_with_offsets_sort_by_instant(self, store: EventStore) -> None:
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
        self, store: EventStore, change: dict[str, Any]
    ) -> None:
        event = {**ALL[0], **change}
        with pytest.raises(BadParameter):
            await store.append(event)
        assert await store.search() == ([], None)

    async def test_bad_search_arguments_are_refused(self, loaded: EventStore) -> None:
        _, cursor = await loaded.search(limit=5)
        assert cursor is not None
        bad: list[dict[str, Any]] = [
            {"cursor": "not a cursor"},
            {"cursor": cursor, "order": "asc"},
            # Crafted: well-formed, but numbers no store could have made (an overflow).
            {"cursor": _crafted_cursor("desc", 2**63, 1)},
            {"cursor": _crafted_cursor("desc", 1, 2**64)},
            {"limit": 0},
            {"order": "sideways"},
            {"since": datetime(2030, 1, 1)},  # no timezone
            {"event_types": "user.login"},
        ]
        for arguments in bad:
            with pytest.raises(BadParameter):
                await loaded.search(**arguments)

    async def test_instances_share_one_log(
        self, store: EventStore, other_store: EventStore
    ) -> None:
        # Every auth process appends to and searches the same log.
        await store.append(ALL[0])
        await other_store.append_many([ALL[1], ALL[0]])
        for reader in (store, other_store):
            page, _ = await reader.search(order="asc")
            assert numbers(page) == [0, 1]

    async def test_append_many_says_which_events_are_new(self, store: EventStore) -> None:
        # A service resending a batch it never heard was stored: the copies are not stored.
        assert await store.append_many(ALL[:3]) == [True, True, True]
        changed = {**ALL[1], "n": 999}
        assert await store.append_many([ALL[2], ALL[3], changed, ALL[4], ALL[4]]) == [
            False,
            True,
            False,
            True,
            False,
        ]
        events, _ = await store.search(order="asc")
        assert numbers(events) == [0, 1, 2, 3, 4]


def _crafted_cursor(order: str, time: int, row_id: int) -> str:
    raw = json.dumps([order, time, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
