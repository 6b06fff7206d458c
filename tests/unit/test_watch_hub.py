"""Auth's watch hub: every watch stream of one set of kinds shares one store watch.

At 10,000 nodes each holding a watch stream, a store watch per stream meant a store
query per stream on every heartbeat; auth stalled. Here many subscribers cost one store
watch, each still gets every event in order, and one that falls behind ends alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from certgate.auth import watch_hub
from certgate.auth.watch_hub import WatchHub
from certgate.backend.base import Event, Item
from certgate.backend.sqlite import SQLiteBackend
from certgate.errors import LimitExceeded
from tests.support.wait import eventually_async


class CountingBackend:
    """The real SQLite backend, counting the store watches opened on it."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend
        self.watches = 0

    def watch(self, prefixes: Sequence[str], start_revision: int = 0) -> AsyncIterator[Event]:
        self.watches += 1
        return self._backend.watch(prefixes, start_revision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[CountingBackend]:
    real = await SQLiteBackend.open(tmp_path / "store.db", poll_interval=0.01)
    yield CountingBackend(real)
    await real.close()


async def _take(events: AsyncIterator[Event], n: int) -> list[str]:
    return [(await anext(events)).item.key for _ in range(n)]


async def test_many_watchers_share_one_store_watch(backend: CountingBackend) -> None:
    hub = WatchHub(backend)  # type: ignore[arg-type]
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(hub.subscribe(["/locks/", "/roles/"]))
            for _ in range(200)
        ]
        for i in range(3):
            await backend.put(Item(key=f"/locks/l{i}", value=b"{}"))
        await backend.put(Item(key="/nodes/n1", value=b"{}"))  # not watched
        await backend.put(Item(key="/roles/r1", value=b"{}"))
        got = await asyncio.gather(*(_take(s, 4) for s in streams))
        assert all(keys == ["/locks/l0", "/locks/l1", "/locks/l2", "/roles/r1"] for keys in got)
        assert backend.watches == 1
        # Another set of kinds is its own store watch.
        async with hub.subscribe(["/nodes/"]) as nodes:
            await backend.put(Item(key="/nodes/n2", value=b"{}"))
            assert await _take(nodes, 1) == ["/nodes/n2"]
        assert backend.watches == 2


async def test_the_last_watcher_leaving_stops_the_store_watch(backend: CountingBackend) -> None:
    hub = WatchHub(backend)  # type: ignore[arg-type]
    async with hub.subscribe(["/locks/"]) as first:
        await backend.put(Item(key="/locks/a", value=b"{}"))
        assert await _take(first, 1) == ["/locks/a"]
    assert not hub._feeds
    async with hub.subscribe(["/locks/"]) as again:  # a fresh one, from now on
        await backend.put(Item(key="/locks/b", value=b"{}"))
        assert await _take(again, 1) == ["/locks/b"]
    assert backend.watches == 2


async def test_a_watcher_that_falls_behind_ends_alone(
    backend: CountingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_hub, "QUEUE_LIMIT", 3)
    hub = WatchHub(backend)  # type: ignore[arg-type]
    async with hub.subscribe(["/locks/"]) as slow, hub.subscribe(["/locks/"]) as keeping_up:
        for i in range(5):
            await backend.put(Item(key=f"/locks/l{i}", value=b"{}"))
            assert await _take(keeping_up, 1) == [f"/locks/l{i}"]
        # The slow one gets what fit, then the end of its stream.
        assert await _take(slow, 3) == ["/locks/l0", "/locks/l1", "/locks/l2"]
        with pytest.raises(LimitExceeded):
            await anext(slow)
        await backend.put(Item(key="/locks/after", value=b"{}"))
        assert await _take(keeping_up, 1) == ["/locks/after"]


async def test_a_watcher_joining_a_running_feed_misses_nothing_after_it_joined(
    backend: CountingBackend,
) -> None:
    hub = WatchHub(backend)  # type: ignore[arg-type]
    async with hub.subscribe(["/locks/"]) as early:
        await backend.put(Item(key="/locks/before", value=b"{}"))
        assert await _take(early, 1) == ["/locks/before"]
        async with hub.subscribe(["/locks/"]) as late:
            writes = [backend.put(Item(key=f"/locks/x{i}", value=b"{}")) for i in range(20)]
            await asyncio.gather(*writes)
            keys = await _take(late, 20)
            assert sorted(keys) == sorted(f"/locks/x{i}" for i in range(20))
            await eventually_async(lambda: backend.watches == 1)


async def test_a_snapshot_is_built_once_until_the_next_event(backend: CountingBackend) -> None:
    hub = WatchHub(backend)  # type: ignore[arg-type]
    builds = 0

    async def build() -> bytes:
        nonlocal builds
        builds += 1
        return str(await backend.current_revision()).encode()

    async with hub.subscribe(["/roles/"]) as first, hub.subscribe(["/roles/"]):
        one = await hub.memo(["/roles/"], "role", build)
        assert await hub.memo(["/roles/"], "role", build) == one  # the second stream's
        assert builds == 1
        await backend.put(Item(key="/roles/r", value=b"{}"))
        await _take(first, 1)  # the feed has passed the event on
        assert await hub.memo(["/roles/"], "role", build) != one
        assert builds == 2

        # A build that an event overtakes is answered but not kept.
        async def overtaken() -> bytes:
            await backend.put(Item(key="/roles/s", value=b"{}"))
            await _take(first, 1)
            return await build()

        await hub.memo(["/roles/"], "other", overtaken)
        await hub.memo(["/roles/"], "other", build)
        assert builds == 4


async def test_a_shared_snapshot_says_the_revision_it_was_read_at(
    backend: CountingBackend,
) -> None:
    # A stream given a kept snapshot must not be told a newer revision than the
    # snapshot's: a role written after the build, not yet passed on by the feed, is
    # not in it, and a watcher resuming from the header's revision would miss it.
    hub = WatchHub(backend)  # type: ignore[arg-type]

    async def build() -> bytes:
        return b",".join(item.key.encode() for item in await backend.range("/roles/"))

    async with hub.subscribe(["/roles/"]) as events:
        await backend.put(Item(key="/roles/a", value=b"{}"))
        await _take(events, 1)
        revision, items = await hub.memo(["/roles/"], "role", build)
        assert items == b"/roles/a"
        written = await backend.put(Item(key="/roles/b", value=b"{}"))
        # The feed has not passed the write on yet: the kept snapshot is answered.
        assert await hub.memo(["/roles/"], "role", build) == (revision, b"/roles/a")
        assert revision < written.revision
        resumed = backend.watch(["/roles/"], revision)
        assert (await anext(resumed)).item.key == "/roles/b"  # resumed, nothing missed
        await resumed.aclose()  # type: ignore[attr-defined]


async def test_stopping_waits_for_the_streams_it_ended(backend: CountingBackend) -> None:
    hub = WatchHub(backend)  # type: ignore[arg-type]
    left: list[str] = []
    release = asyncio.Event()

    async def stream(name: str, lingers: bool) -> None:
        async with hub.subscribe(["/locks/"]) as events:
            async for _ in events:
                pass  # ends cleanly when the hub closes
            if lingers:
                await release.wait()  # a handler still busy after its stream ended
            left.append(name)

    tasks = [asyncio.create_task(stream("a", False)), asyncio.create_task(stream("b", True))]
    await eventually_async(lambda: hub._streams == 2)
    hub.close()
    assert not await hub.drained(0.2)  # b's handler has not finished: not drained
    assert left == ["a"]
    release.set()
    assert await hub.drained(3.0)
    assert sorted(left) == ["a", "b"]
    await asyncio.gather(*tasks)


async def test_events_queued_behind_one_are_taken_together_in_order(
    backend: CountingBackend,
) -> None:
    # What a watch stream writes in one go: the first event awaited, then every one
    # already queued, in order; the stream then waits for the next, as before.
    hub = WatchHub(backend)  # type: ignore[arg-type]
    async with hub.subscribe(["/nodes/"]) as events:
        for i in range(5):
            await backend.put(Item(key=f"/nodes/n{i}", value=b"{}"))
        first = await anext(events)
        rest: list[Event] = []  # taken as they reach the queue, never awaited
        await eventually_async(lambda: rest.extend(events.ready()) or len(rest) == 4)
        assert [e.item.key for e in [first, *rest]] == [f"/nodes/n{i}" for i in range(5)]
        assert events.ready() == []  # taken off the queue: not handed out twice
        await backend.put(Item(key="/nodes/n5", value=b"{}"))
        assert (await anext(events)).item.key == "/nodes/n5"
