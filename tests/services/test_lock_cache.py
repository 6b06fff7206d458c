"""Auth's copy of the locks (services/locks.py) through a store that fails for a moment:
the copy comes back, and no lock check answers from a copy that has stopped following.

The store is the real SQLite backend; a wrapper fails its watch and reads the way an
unreachable PostgreSQL does (ConnectionProblem), for as long as a test says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.backend.base import Event
from certgate.backend.sqlite import SQLiteBackend
from certgate.clock import SystemClock
from certgate.errors import ConnectionProblem
from certgate.services.locks import LockCache
from certgate.services.store import ResourceStore
from tests.support.wait import eventually_async


class BlinkingStore:
    """The real store, whose watch breaks once and whose reads fail while `down`."""

    def __init__(self, inner: SQLiteBackend) -> None:
        self.inner = inner
        self.down = False
        self.break_watch = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self) -> None:
        if self.down:
            raise ConnectionProblem("the store is unreachable")

    async def current_revision(self) -> int:
        self._check()
        return await self.inner.current_revision()

    async def range(self, prefix: str, limit: int = 0) -> list[Any]:
        self._check()
        return await self.inner.range(prefix, limit)

    async def watch(self, prefixes: Sequence[str], start_revision: int = 0) -> AsyncIterator[Event]:
        self._check()
        async for event in self.inner.watch(prefixes, start_revision):
            if self.break_watch:
                self.break_watch = False
                raise ConnectionProblem("the store is unreachable")
            yield event


def lock(name: str, user: str, expires_in: float | None = None) -> Lock:
    expires = None
    if expires_in is not None:
        expires = SystemClock().now() + timedelta(seconds=expires_in)
    return Lock(
        metadata=Metadata(name=name, expires=expires), spec=LockSpec(target=LockTarget(user=user))
    )


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    store = await SQLiteBackend.open(tmp_path / "state.db")
    yield store
    await store.close()


async def test_after_the_watch_and_a_reload_fail_the_copy_follows_the_store_again(
    backend: SQLiteBackend,
) -> None:
    blinking = BlinkingStore(backend)
    cache = LockCache(blinking, ResourceStore(blinking, "/locks/", Lock, "lock"))  # type: ignore[arg-type]
    await cache.start()
    writer = ResourceStore(backend, "/locks/", Lock, "lock")

    blinking.break_watch, blinking.down = True, True
    await writer.create(lock("l1", "mallory"))  # breaks the watch; the reload fails
    with pytest.raises(ConnectionProblem, match="cannot confirm locks"):
        await cache.current()  # not the copy from before the blip

    blinking.down = False
    await writer.create(lock("l2", "eve"))
    names = await cache.current()
    assert sorted(lock.name for lock in names) == ["l1", "l2"]
    await eventually_async(lambda: sorted(lock.name for lock in cache.all()) == ["l1", "l2"])
    await writer.create(lock("l3", "trudy"))  # and it follows the watch again
    await eventually_async(lambda: "l3" in {lock.name for lock in cache.all()})
    assert cache._task is not None and not cache._task.done()
    await cache.close()


async def test_a_lock_that_expired_while_the_watch_was_down_is_announced(
    backend: SQLiteBackend,
) -> None:
    blinking = BlinkingStore(backend)
    expired: list[str] = []

    async def on_expired(gone: Lock) -> None:
        expired.append(gone.name)

    cache = LockCache(blinking, ResourceStore(blinking, "/locks/", Lock, "lock"), on_expired)  # type: ignore[arg-type]
    writer = ResourceStore(backend, "/locks/", Lock, "lock")
    await writer.create(lock("brief", "mallory", expires_in=2.5))
    await cache.start()
    assert [lock.name for lock in cache.all()] == ["brief"]

    blinking.break_watch, blinking.down = True, True
    await writer.create(lock("other", "eve"))  # breaks the watch
    await eventually_async(lambda: cache._watching is False)
    await asyncio.sleep(2.0)  # "brief" expires meanwhile (within the cache's 1 s slack)
    blinking.down = False
    await eventually_async(lambda: expired == ["brief"], timeout=10)
    assert [lock.name for lock in await cache.current()] == ["other"]
    await cache.close()
