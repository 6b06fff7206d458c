"""Auth's cache of who holds each name (services/host_names.py), on both backends.

After an auth restart every node beats within seconds, and each beat asks who holds its
name. The cache must answer them from one range read taken at start, and read names it
does not hold together, not one store read each (on PostgreSQL one was a pooled
connection each: the pool was gone, auth never became ready); and a name released
through another auth process must still stop counting here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.backend.base import Backend, Item
from certgate.backend.registry import open_backend
from certgate.clock import FakeClock
from certgate.services.host_names import HostName, HostNames
from tests.support.postgres import PostgresServer


class CountingReads:
    """The real backend, counting the point reads made on it (get and get_many)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.reads = 0

    async def get(self, key: str) -> Item:
        self.reads += 1
        return await self._backend.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[Item]:
        self.reads += 1
        return await self._backend.get_many(keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"type": "sqlite", "poll_interval": 0.01}
    server: PostgresServer = request.getfixturevalue("postgres_server")
    schema: str = request.getfixturevalue("postgres_schema")
    return server.storage(schema)


@pytest.fixture
async def backends(
    storage: dict[str, Any], tmp_path: Path, clock: FakeClock
) -> AsyncIterator[list[Backend]]:
    """Two instances on one store, as two auth processes open it."""
    opened = [await open_backend(storage, tmp_path, clock) for _ in range(2)]
    yield opened
    for backend in opened:
        await backend.close()


async def soon(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def entry(name: str, clock: FakeClock) -> HostName:
    now = clock.now().replace(microsecond=0)
    return HostName(role="node", name=name, issued=now, expires=now + timedelta(hours=1))


async def test_names_held_before_a_restart_are_answered_without_a_store_read(
    backends: list[Backend], clock: FakeClock
) -> None:
    before, _ = backends
    earlier = HostNames(before)
    for i in range(300):
        await earlier.claim(entry(f"n{i:03d}", clock))
    counting = CountingReads(backends[1])
    names = HostNames(counting, clock)  # type: ignore[arg-type]
    await names.start()  # the restarted auth: one range read
    try:
        found = await asyncio.gather(*(names.holder("node", f"n{i:03d}") for i in range(300)))
        assert [h.name if h else None for h in found] == [f"n{i:03d}" for i in range(300)]
        assert counting.reads == 0
        # A name the range did not have is read from the store (the count can see it).
        await earlier.claim(entry("late", clock))
        assert (await names.holder("node", "late")) is not None
        assert counting.reads == 1
    finally:
        await names.close()


async def test_misses_that_arrive_together_are_read_together(
    backends: list[Backend], clock: FakeClock
) -> None:
    counting = CountingReads(backends[0])
    names = HostNames(counting, clock)  # type: ignore[arg-type]
    await names.start()
    try:
        other = HostNames(backends[1])  # names claimed through another auth after start
        for i in range(200):
            await other.claim(entry(f"m{i:03d}", clock))
        asked = [f"m{i:03d}" for i in range(200)] + ["nobody"]
        found = await asyncio.gather(*(names.holder("node", name) for name in asked))
        assert [h.name if h else None for h in found] == [*asked[:-1], None]
        assert counting.reads <= 3  # the first miss alone, then the rest in one or two
        assert names.reads == counting.reads
    finally:
        await names.close()


async def test_a_name_released_through_another_auth_stops_counting_here(
    backends: list[Backend], clock: FakeClock
) -> None:
    here, there = HostNames(backends[0], clock), HostNames(backends[1], clock)
    await there.claim(entry("web-1", clock))
    await here.start()  # web-1 is in the range read
    try:
        assert await here.holder("node", "web-1") is not None
        await there.release("node", "web-1")

        async def released() -> bool:
            return await here.holder("node", "web-1") is None

        await soon(released)
        # Claimed again by a newer holder: the new one, not the cached old one.
        clock.advance(timedelta(seconds=2))
        await there.claim(entry("web-1", clock))

        async def newer() -> bool:
            held = await here.holder("node", "web-1")
            return held is not None and held.issued == entry("web-1", clock).issued

        await soon(newer)
    finally:
        await here.close()
