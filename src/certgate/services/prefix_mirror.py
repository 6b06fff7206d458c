"""An in-memory copy of every item under one key prefix, kept current by the store's watch.

`cgsh ls` at 10,000 nodes read and decoded every node from the store per call, while
the same nodes were changing 333 times a second. Auth keeps a mirror of `/nodes/`
instead: one range read at start, then the watch's events (a write through any auth
process arrives within the backend's watch latency). Readers get the items live now;
while the watch is down they are told so (`current` is False) and read the store.

    mirror = PrefixMirror(backend, "/nodes/", clock)
    await mirror.start()
    items = mirror.items() if mirror.current else await backend.range("/nodes/")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from certgate.backend.base import Backend, EventType, Item
from certgate.clock import Clock
from certgate.errors import CertgateError

log = logging.getLogger("certgate.store")

RETRY_DELAY = 1.0


class MirrorListener(Protocol):
    """Something kept from the mirror's items (an index), told of every change."""

    def reset(self, items: Iterable[Item]) -> None: ...

    def put(self, item: Item) -> None: ...

    def delete(self, key: str) -> None: ...


class PrefixMirror:
    def __init__(
        self, backend: Backend, prefix: str, clock: Clock, listener: MirrorListener | None = None
    ) -> None:
        self._backend = backend
        self._prefix = prefix
        self._clock = clock
        self._listener = listener
        self._items: dict[str, Item] = {}
        self._task: asyncio.Task[None] | None = None
        self.current = False

    async def start(self) -> None:
        revision = await self._reload()
        self._task = asyncio.create_task(self._follow(revision), name=f"mirror {self._prefix}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.current = False

    def items(self) -> list[Item]:
        """The items not expired now, in key order (as `Backend.range` returns them)."""
        now = self._clock.now()
        live = (i for i in self._items.values() if i.expires is None or i.expires > now)
        return sorted(live, key=lambda item: item.key)

    async def _reload(self) -> int:
        # The revision first: events after it may repeat the snapshot, never skip past it.
        revision = await self._backend.current_revision()
        self._items = {item.key: item for item in await self._backend.range(self._prefix)}
        if self._listener is not None:
            self._listener.reset(self._items.values())
        return revision

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                self.current = True
                async for event in self._backend.watch([self._prefix], revision):
                    revision = event.item.revision
                    if event.type is EventType.DELETE:
                        self._items.pop(event.item.key, None)
                        if self._listener is not None:
                            self._listener.delete(event.item.key)
                    else:
                        self._items[event.item.key] = event.item
                        if self._listener is not None:
                            self._listener.put(event.item)
                self.current = False
                return  # the backend closed
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # compacted past us, store unreachable, a bug
                self.current = False
                log.warning(
                    "mirror of %s lost its watch, reloading: %s",
                    self._prefix,
                    exc,
                    exc_info=not isinstance(exc, CertgateError),
                )
            while True:
                await asyncio.sleep(RETRY_DELAY)
                try:
                    revision = await self._reload()
                    break
                except CertgateError as exc:
                    log.warning("mirror of %s cannot reload yet: %s", self._prefix, exc)
