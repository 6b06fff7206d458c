"""The compliance suite every `Backend` must pass.

A backend's test module subclasses `BackendSuite` and supplies a `backend_target`
fixture (see conftest.py); the tests here use only the `Backend` protocol, the
registry and the injected `FakeClock`, never an implementation.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import certgate
from certgate.backend.base import Backend, Event, EventType, Item
from certgate.clock import FakeClock
from certgate.errors import AlreadyExists, BadParameter, CompareFailed, NotFound

from .conftest import BackendTarget

# Generous upper bounds for waits that normally finish in milliseconds.
WAIT = 30.0
# How long to listen before concluding that no (more) event is coming.
QUIET = 0.2


@asynccontextmanager
async def watching(
    backend: Backend, prefixes: Sequence[str], start_revision: int = 0
) -> AsyncIterator[AsyncIterator[Event]]:
    """A watch that is closed when the block ends, even if the test fails."""
    events = backend.watch(prefixes, start_revision)
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def next_events(events: AsyncIterator[Event], count: int) -> list[Event]:
    async with asyncio.timeout(WAIT):
        return [await anext(events) for _ in range(count)]


async def assert_quiet(events: AsyncIterator[Event]) -> None:
    """No event arrives for a while. Ends the watch, so call it last."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(QUIET):
            event = await anext(events)
            pytest.fail(f"unexpected event {event}")


def summary(events: Sequence[Event]) -> list[tuple[EventType, str]]:
    return [(event.type, event.item.key) for event in events]


class BackendSuite:
    # -- create, get, put, delete --------------------------------------------------

    async def test_put_then_get(self, backend: Backend, clock: FakeClock) -> None:
        expires = clock.now() + timedelta(hours=1)
        stored = await backend.put(Item("/users/alice", b"\x00value\xff", expires=expires))
        got = await backend.get("/users/alice")
        assert got == stored
        assert got.value == b"\x00value\xff"
        assert got.revision > 0
        assert got.expires == expires

    async def test_get_missing_is_not_found(self, backend: Backend) -> None:
        with pytest.raises(NotFound):
            await backend.get("/nothing/here")

    async def test_get_many_returns_present_items_in_the_order_asked(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = await backend.put(Item("/roles/a", b"a"))
        c = await backend.put(Item("/roles/c", b"c"))
        await backend.put(Item("/roles/old", b"x", expires=clock.now() + timedelta(seconds=1)))
        clock.advance(timedelta(seconds=2))
        got = await backend.get_many(["/roles/c", "/roles/missing", "/roles/old", "/roles/a"])
        assert got == [c, a]
        assert await backend.get_many([]) == []
        with pytest.raises(BadParameter):
            await backend.get_many("/roles/a")

    async def test_create_refuses_existing_key(self, backend: Backend) -> None:
        created = await backend.create(Item("/roles/dev", b"one"))
        with pytest.raises(AlreadyExists):
            await backend.create(Item("/roles/dev", b"two"))
        assert await backend.get("/roles/dev") == created

    async def test_write_many_creates_all_or_none(self, backend: Backend) -> None:
        existing = await backend.create(Item("/roles/b", b"old"))
        with pytest.raises(AlreadyExists, match="/roles/b"):
            await backend.write_many(
                [Item("/roles/a", b"a"), Item("/roles/b", b"b"), Item("/roles/c", b"c")],
                create_only=True,
            )
        assert await backend.range("/roles/") == [existing]  # /roles/a was not written
        written = await backend.write_many(
            [Item("/roles/a", b"a"), Item("/roles/c", b"c")], create_only=True
        )
        assert [item.value for item in written] == [b"a", b"c"]
        assert written[0].revision < written[1].revision
        assert await backend.range("/roles/") == [written[0], existing, written[1]]

    async def test_write_many_overwrites_unless_create_only(self, backend: Backend) -> None:
        await backend.put(Item("/k/1", b"old"))
        async with watching(backend, ["/k/"]) as events:
            written = await backend.write_many(
                [Item("/k/1", b"new"), Item("/k/2", b"two")], create_only=False
            )
            assert [event.item for event in await next_events(events, 2)] == written
        assert (await backend.get("/k/1")).value == b"new"

    async def test_write_many_deletes_live_keys_in_the_same_transaction(
        self, backend: Backend
    ) -> None:
        await backend.put(Item("/k/gone", b"old"))
        await backend.put(Item("/k/kept", b"kept"))
        async with watching(backend, ["/k/"]) as events:
            written = await backend.write_many(
                [Item("/k/new", b"new")], create_only=False, deletes=["/k/gone", "/k/never"]
            )
            seen = await next_events(events, 2)
        assert [(e.type, e.item.key) for e in seen] == [
            (EventType.PUT, "/k/new"),
            (EventType.DELETE, "/k/gone"),
        ]
        assert seen[1].item.revision > written[0].revision
        assert [item.key for item in await backend.range("/k/")] == ["/k/kept", "/k/new"]
        # Deletes alone, of keys already gone: nothing happens, nothing fails.
        assert await backend.write_many([], create_only=False, deletes=["/k/gone"]) == []
        await backend.write_many([], create_only=False, deletes=["/k/kept"])
        assert [item.key for item in await backend.range("/k/")] == ["/k/new"]

    async def test_an_expiry_past_year_9999_in_utc_still_reads(self, backend: Backend) -> None:
        # 9999-12-31T23:59:59-23:59 is in year 10000 in UTC: storable as an epoch, but
        # it once failed every later read of its prefix.
        far = datetime.fromisoformat("9999-12-31T23:59:59-23:59")
        await backend.put(Item("/locks/far", b"v", expires=far))
        await backend.put(Item("/locks/near", b"w"))
        items = await backend.range("/locks/")
        assert [item.key for item in items] == ["/locks/far", "/locks/near"]
        assert (await backend.get("/locks/far")).value == b"v"

    async def test_put_overwrites(self, backend: Backend) -> None:
        first = await backend.put(Item("/k", b"one"))
        second = await backend.put(Item("/k", b"two"))
        assert second.revision > first.revision
        assert (await backend.get("/k")).value == b"two"

    async def test_delete(self, backend: Backend) -> None:
        await backend.put(Item("/k", b"v"))
        await backend.delete("/k")
        with pytest.raises(NotFound):
            await backend.get("/k")
        with pytest.raises(NotFound):
            await backend.delete("/k")

    async def test_delete_range_removes_only_the_prefix(self, backend: Backend) -> None:
        for key in ("/a/1", "/a/2", "/a/3/x", "/ab", "/b/1"):
            await backend.put(Item(key, b"v"))
        assert await backend.delete_range("/a/") == 3
        assert [item.key for item in await backend.range("/")] == ["/ab", "/b/1"]
        assert await backend.delete_range("/a/") == 0

    async def test_empty_key_is_refused(self, backend: Backend) -> None:
        with pytest.raises(BadParameter):
            await backend.put(Item("", b"v"))

    # -- range --------------------------------------------------------------------

    async def test_range_is_ordered_by_key(self, backend: Backend) -> None:
        keys = [f"/nodes/{name}" for name in ("db-1", "web-10", "web-2", "app", "db-0")]
        for key in random.Random(7).sample(keys, len(keys)):
            await backend.put(Item(key, key.encode()))
        items = await backend.range("/nodes/")
        assert [item.key for item in items] == sorted(keys)
        assert all(item.value == item.key.encode() for item in items)

    async def test_range_keeps_prefixes_apart(self, backend: Backend) -> None:
        for key in ("/a", "/a/", "/a/x", "/a/y/z", "/ab", "/ab/x", "/a0", "/b"):
            await backend.put(Item(key, b"v"))
        assert [item.key for item in await backend.range("/a/")] == ["/a/", "/a/x", "/a/y/z"]
        assert [item.key for item in await backend.range("/ab")] == ["/ab", "/ab/x"]
        assert await backend.range("/c/") == []

    async def test_range_limit(self, backend: Backend) -> None:
        for index in range(10):
            await backend.put(Item(f"/items/{index:02d}", b"v"))
        assert [item.key for item in await backend.range("/items/", limit=3)] == [
            "/items/00",
            "/items/01",
            "/items/02",
        ]
        assert len(await backend.range("/items/")) == 10

    async def test_range_with_non_ascii_keys(self, backend: Backend) -> None:
        keys = ["/u/é", "/u/z", "/u/\uffff", "/u/\U0001f600", "/u/\U0010ffff", "/u/\U0010ffffa"]
        for key in [*keys, "/u0", "/v/"]:
            await backend.put(Item(key, b"v"))
        assert [item.key for item in await backend.range("/u/")] == sorted(keys)
        assert [item.key for item in await backend.range("/u/\U0010ffff")] == keys[-2:]

    # -- compare-and-swap ---------------------------------------------------------

    async def test_compare_and_swap(self, backend: Backend) -> None:
        first = await backend.put(Item("/k", b"one"))
        second = await backend.compare_and_swap(Item("/k", b"two"), first.revision)
        assert second.revision > first.revision
        assert await backend.get("/k") == second

    async def test_compare_and_swap_refuses_stale_revision(self, backend: Backend) -> None:
        first = await backend.put(Item("/k", b"one"))
        current = await backend.put(Item("/k", b"two"))
        with pytest.raises(CompareFailed):
            await backend.compare_and_swap(Item("/k", b"three"), first.revision)
        assert await backend.get("/k") == current

    async def test_compare_and_swap_missing_is_not_found(self, backend: Backend) -> None:
        with pytest.raises(NotFound):
            await backend.compare_and_swap(Item("/k", b"v"), 1)

    async def test_only_one_concurrent_swap_wins(
        self, backend: Backend, other_backend: Backend
    ) -> None:
        start = await backend.put(Item("/counter", b"0"))
        writers = [backend, other_backend] * 5
        results = await asyncio.gather(
            *(
                writer.compare_and_swap(Item("/counter", str(n).encode()), start.revision)
                for n, writer in enumerate(writers)
            ),
            return_exceptions=True,
        )
        winners = [result for result in results if isinstance(result, Item)]
        assert len(winners) == 1
        assert all(isinstance(result, (Item, CompareFailed)) for result in results)
        assert await backend.get("/counter") == winners[0]

    # -- revisions ----------------------------------------------------------------

    async def test_revisions_increase_with_every_write(self, backend: Backend) -> None:
        revisions = [await backend.current_revision()]
        revisions.append((await backend.create(Item("/a", b"1"))).revision)
        revisions.append((await backend.put(Item("/b", b"1"))).revision)
        revisions.append((await backend.put(Item("/a", b"2"))).revision)
        revisions.append((await backend.compare_and_swap(Item("/a", b"3"), revisions[-1])).revision)
        await backend.delete("/b")
        revisions.append(await backend.current_revision())
        assert revisions == sorted(set(revisions))
        assert await backend.current_revision() == revisions[-1]

    # -- expiry -------------------------------------------------------------------

    async def test_expired_item_is_gone(self, backend: Backend, clock: FakeClock) -> None:
        await backend.put(Item("/t/short", b"v", expires=clock.now() + timedelta(seconds=10)))
        await backend.put(Item("/t/long", b"v", expires=clock.now() + timedelta(hours=1)))
        await backend.put(Item("/t/forever", b"v"))
        assert len(await backend.range("/t/")) == 3
        clock.advance(timedelta(seconds=10))
        with pytest.raises(NotFound):
            await backend.get("/t/short")
        assert [item.key for item in await backend.range("/t/")] == ["/t/forever", "/t/long"]
        with pytest.raises(NotFound):
            await backend.delete("/t/short")

    async def test_create_replaces_expired_item(self, backend: Backend, clock: FakeClock) -> None:
        await backend.create(Item("/lock", b"old", expires=clock.now() + timedelta(seconds=5)))
        clock.advance(timedelta(seconds=6))
        created = await backend.create(Item("/lock", b"new"))
        assert await backend.get("/lock") == created

    async def test_swap_on_expired_item_is_not_found(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        item = await backend.put(Item("/k", b"v", expires=clock.now() + timedelta(seconds=5)))
        clock.advance(timedelta(seconds=6))
        with pytest.raises(NotFound):
            await backend.compare_and_swap(Item("/k", b"w"), item.revision)

    async def test_expiry_reaches_watchers(self, backend: Backend, clock: FakeClock) -> None:
        item = await backend.put(Item("/t/k", b"v", expires=clock.now() + timedelta(seconds=10)))
        async with watching(backend, ["/t/"], item.revision) as events:
            clock.advance(timedelta(seconds=11))
            [event] = await next_events(events, 1)
            assert event.type is EventType.DELETE
            assert event.item.key == "/t/k"
            assert event.item.revision > item.revision
            await assert_quiet(events)

    # -- watch --------------------------------------------------------------------

    async def test_watch_delivers_events_in_order(self, backend: Backend) -> None:
        async with watching(backend, ["/w/"]) as events:
            a = await backend.put(Item("/w/a", b"1"))
            await backend.create(Item("/w/b", b"2"))
            await backend.compare_and_swap(Item("/w/a", b"3"), a.revision)
            await backend.delete("/w/b")
            await backend.put(Item("/w/c", b"4"))
            await backend.delete_range("/w/")
            got = await next_events(events, 7)
        assert summary(got) == [
            (EventType.PUT, "/w/a"),
            (EventType.PUT, "/w/b"),
            (EventType.PUT, "/w/a"),
            (EventType.DELETE, "/w/b"),
            (EventType.PUT, "/w/c"),
            (EventType.DELETE, "/w/a"),
            (EventType.DELETE, "/w/c"),
        ]
        assert [event.item.value for event in got if event.type is EventType.PUT] == [
            b"1",
            b"2",
            b"3",
            b"4",
        ]
        revisions = [event.item.revision for event in got]
        assert revisions == sorted(set(revisions))

    async def test_watch_from_zero_sees_only_new_events(self, backend: Backend) -> None:
        await backend.put(Item("/w/old", b"v"))
        async with watching(backend, ["/w/"]) as events:
            new = await backend.put(Item("/w/new", b"v"))
            [event] = await next_events(events, 1)
            assert event.item == new
            await assert_quiet(events)

    async def test_watch_resumes_after_a_revision(self, backend: Backend) -> None:
        written = [await backend.put(Item(f"/w/{n}", str(n).encode())) for n in range(10)]
        async with watching(backend, ["/w/"], written[4].revision) as events:
            got = await next_events(events, 5)
            assert [event.item for event in got] == written[5:]
            await assert_quiet(events)

    async def test_watch_filters_by_prefix(self, backend: Backend) -> None:
        async with watching(backend, ["/a/", "/c/"]) as events:
            for key in ("/a/1", "/ab", "/b/1", "/c/1", "/a", "/c/2/x"):
                await backend.put(Item(key, b"v"))
            got = await next_events(events, 3)
            assert summary(got) == [
                (EventType.PUT, "/a/1"),
                (EventType.PUT, "/c/1"),
                (EventType.PUT, "/c/2/x"),
            ]
            await assert_quiet(events)

    async def test_watch_ends_when_backend_closes(self, backend: Backend) -> None:
        seen: list[Event] = []

        async def drain() -> None:
            async for event in backend.watch(["/"]):
                seen.append(event)

        task = asyncio.create_task(drain())
        async with asyncio.timeout(WAIT):  # the watch is running: it delivers a marker
            while not seen:
                await backend.put(Item("/watch-ready", b"x"))
                await asyncio.sleep(0.05)
        await backend.close()
        async with asyncio.timeout(WAIT):
            await task
        assert {event.item.key for event in seen} == {"/watch-ready"}

    async def test_watch_refuses_a_bare_string(self, backend: Backend) -> None:
        with pytest.raises(BadParameter):
            backend.watch("/a/")

    # -- concurrency and sharing --------------------------------------------------

    async def test_concurrent_writers(self, backend: Backend, other_backend: Backend) -> None:
        async def write(writer: Backend, task: int) -> list[int]:
            return [
                (await writer.put(Item(f"/c/{task}/{n:03d}", b"v"))).revision for n in range(100)
            ]

        writers = [backend, other_backend, backend, other_backend]
        async with watching(backend, ["/c/"]) as events:
            results = await asyncio.gather(*(write(w, t) for t, w in enumerate(writers)))
            got = await next_events(events, 400)
        revisions = [revision for result in results for revision in result]
        assert len(set(revisions)) == 400
        assert all(result == sorted(result) for result in results)
        assert len(await backend.range("/c/")) == 400
        assert [event.item.revision for event in got] == sorted(revisions)

    async def test_instances_share_the_store(
        self, backend: Backend, other_backend: Backend
    ) -> None:
        written = await backend.put(Item("/shared", b"one"))
        assert await other_backend.get("/shared") == written
        swapped = await other_backend.compare_and_swap(Item("/shared", b"two"), written.revision)
        with pytest.raises(CompareFailed):
            await backend.compare_and_swap(Item("/shared", b"three"), written.revision)
        assert await backend.get("/shared") == swapped
        assert await backend.current_revision() == swapped.revision

    async def test_watch_sees_another_instances_writes(
        self, backend: Backend, other_backend: Backend
    ) -> None:
        start = await backend.current_revision()
        async with watching(backend, ["/x/"], start) as events:
            first = await other_backend.put(Item("/x/1", b"v"))
            await other_backend.delete("/x/1")
            got = await next_events(events, 2)
        assert got[0].item == first
        assert summary(got) == [(EventType.PUT, "/x/1"), (EventType.DELETE, "/x/1")]

    async def test_watch_sees_another_process_writes(
        self, backend: Backend, backend_target: BackendTarget
    ) -> None:
        count = 50
        start = await backend.current_revision()
        async with watching(backend, ["/p/"], start) as events:
            writer = await start_writer(backend_target, "/p/child/", count)
            # Write here too while the child writes, so the two contend for the store.
            for n in range(count):
                await backend.put(Item(f"/p/parent/{n:03d}", b"v"))
            got = await next_events(events, 2 * count)
            async with asyncio.timeout(WAIT * 2):
                _, stderr = await writer.communicate()
            assert writer.returncode == 0, stderr.decode()
        revisions = [event.item.revision for event in got]
        assert revisions == sorted(set(revisions))
        child = [event.item.key for event in got if event.item.key.startswith("/p/child/")]
        assert child == [f"/p/child/{n:03d}" for n in range(count)]
        assert len(await backend.range("/p/")) == 2 * count


_WRITER = """
import asyncio, json, sys
from pathlib import Path
from certgate.backend.base import Item
from certgate.backend.registry import open_backend

async def main() -> None:
    storage, data_dir, prefix, count = json.loads(sys.argv[1])
    backend = await open_backend(storage, Path(data_dir))
    try:
        for n in range(count):
            await backend.put(Item(f"{prefix}{n:03d}", b"from another process"))
    finally:
        await backend.close()

asyncio.run(main())
"""


async def start_writer(
    target: BackendTarget, prefix: str, count: int
) -> asyncio.subprocess.Process:
    """Start a separate Python process that puts `count` keys under `prefix`."""
    source_dir = Path(certgate.__file__).resolve().parent.parent
    path = [str(source_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    args = json.dumps([target.storage, str(target.data_dir), prefix, count])
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER,
        args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
