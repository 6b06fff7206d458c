"""Auth's in-memory copy of the locks, kept current by the store's watch.

Every API call of a user checks the locks; reading them from the store each time would
put a query on the hottest path (certificate renewal). The copy follows the store's
watch, so a lock written by any auth process applies here within the backend's watch
latency (in-process: at once; SQLite across processes: one poll interval).

An auth cut off from a shared store (PostgreSQL) would go on answering from a copy that
misses the locks other auth processes wrote meanwhile, and after the cut heals its
watch may still wait out a retry. `current()` refuses to answer from a copy that is
behind: it has the store read through first, or says it cannot confirm the locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from certgate.api.lock import Lock
from certgate.backend.base import Backend, EventType
from certgate.clock import Clock, SystemClock
from certgate.errors import CompareFailed, ConnectionProblem
from certgate.services.store import ResourceStore

log = logging.getLogger("certgate.locks")

# How long a lock check waits for the store to be read through when the copy is behind.
CATCH_UP_SECONDS = 2.0


class LockCache:
    def __init__(
        self,
        backend: Backend,
        store: ResourceStore[Lock],
        on_expired: Callable[[Lock], Awaitable[None]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._backend = backend
        self._store = store
        self._on_expired = on_expired
        self._clock = clock or SystemClock()
        self._locks: dict[str, Lock] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        revision = await self._reload()
        self._task = asyncio.create_task(self._follow(revision), name="lock cache")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def all(self) -> list[Lock]:
        """The locks as last read, however long ago (see `current`)."""
        return list(self._locks.values())

    async def current(self) -> list[Lock]:
        """The locks, with every lock the store holds now among them: ConnectionProblem
        if the copy is behind the store and cannot catch up within CATCH_UP_SECONDS."""
        behind = self._backend.seconds_behind()
        if behind and not await self._backend.catch_up(CATCH_UP_SECONDS):
            raise ConnectionProblem(
                f"auth cannot confirm locks: it has not read its store for {behind:.0f}s"
                " (the database is unreachable from this auth); try again, or through"
                " another auth"
            )
        return self.all()

    def _expired(self, lock: Lock) -> bool:
        expires = lock.metadata.expires
        # A little slack: the store reaps expired items on its own schedule.
        return expires is not None and expires <= self._clock.now() + timedelta(seconds=1)

    async def _reload(self) -> int:
        revision = await self._backend.current_revision()
        self._locks = {lock.name: lock for lock in await self._store.list_readable()}
        return revision

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                async for event in self._backend.watch([self._store.prefix], revision):
                    revision = event.item.revision
                    name = event.item.key[len(self._store.prefix) :]
                    if event.type is EventType.DELETE:
                        gone = self._locks.pop(name, None)
                        if gone is not None and self._expired(gone) and self._on_expired:
                            await self._on_expired(gone)
                    elif (lock := self._store.decode_or_skip(event.item)) is not None:
                        self._locks[name] = lock
                return  # the backend closed
            except CompareFailed:
                revision = await self._reload()  # fell too far behind: start over
            except Exception:
                log.exception("lock cache lost its watch; reloading")
                await asyncio.sleep(0.5)
                revision = await self._reload()
