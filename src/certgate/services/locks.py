"""Auth's in-memory copy of the locks, kept current by the store's watch.

Every API call of a user checks the locks; reading them from the store each time would
put a query on the hottest path (certificate renewal). The copy follows the store's
watch, so a lock written by any auth process applies here within the backend's watch
latency (in-process: at once; SQLite across processes: one poll interval).

An auth cut off from a shared store (PostgreSQL) would go on answering from a copy that
misses the locks other auth processes wrote meanwhile, and after the cut heals its
watch may still wait out a retry. `current()` refuses to answer from a copy that is
behind: it has the store read through first, or says it cannot confirm the locks.
When the watch itself is lost (a blip, or compacted past), the copy is reloaded, retried
until the store answers, and lock checks read the store themselves meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from certgate.api.lock import Lock
from certgate.backend.base import Backend, EventType
from certgate.clock import Clock, SystemClock
from certgate.errors import CertgateError, CompareFailed, ConnectionProblem
from certgate.services.store import ResourceStore

log = logging.getLogger("certgate.locks")

# How long a lock check waits for the store to be read through when the copy is behind.
CATCH_UP_SECONDS = 2.0
# Reloading after the watch is lost: the first retry, and the most between two.
RELOAD_FIRST = 0.5
RELOAD_MAX = 5.0


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
        self._watching = False  # the watch keeps the copy current

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
        if not self._watching:
            return await self._read_through()
        behind = self._backend.seconds_behind()
        if behind and not await self._backend.catch_up(CATCH_UP_SECONDS):
            raise ConnectionProblem(
                f"auth cannot confirm locks: it has not read its store for {behind:.0f}s"
                " (the database is unreachable from this auth); try again, or through"
                " another auth"
            )
        return self.all()

    async def _read_through(self) -> list[Lock]:
        """The locks read from the store now: the watch that keeps the copy is down."""
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                return await self._store.list_readable()
        except (TimeoutError, CertgateError) as exc:
            raise ConnectionProblem(
                "auth cannot confirm locks: it lost its store watch and cannot read the"
                f" store ({exc or 'timed out'}); try again, or through another auth"
            ) from None

    def _expired(self, lock: Lock) -> bool:
        expires = lock.metadata.expires
        # A little slack: the store reaps expired items on its own schedule.
        return expires is not None and expires <= self._clock.now() + timedelta(seconds=1)

    async def _reload(self) -> int:
        revision = await self._backend.current_revision()
        before = self._locks
        self._locks = {lock.name: lock for lock in await self._store.list_readable()}
        # Expired while the watch was down (or in the gap it fell behind by): the
        # callback's event has a uid of its own per lock, so every auth that sees it
        # stores it once.
        for name, lock in before.items():
            if name not in self._locks and self._expired(lock) and self._on_expired:
                await self._on_expired(lock)
        return revision

    async def _reload_until_done(self, delay: float) -> int:
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                return await self._reload()
            except CertgateError as exc:
                log.warning("lock cache cannot reload the locks yet (retrying): %s", exc)
            delay = min(max(delay * 2, RELOAD_FIRST), RELOAD_MAX)

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                self._watching = True
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
                delay = 0.0  # fell too far behind: start over at once
            except Exception as exc:
                log.warning(
                    "lock cache lost its watch; reloading: %s",
                    exc,
                    exc_info=not isinstance(exc, CertgateError),
                )
                delay = RELOAD_FIRST
            finally:
                # Until the reload is done, lock checks read the store themselves.
                self._watching = False
            revision = await self._reload_until_done(delay)
