"""Which host identity holds each service name, so a join token cannot take one over.

    /host_names/<role>/<name>   HostName: the holder's certificate issue time and expiry

A join creates the entry (create fails if present: of two racing joins one wins); it
expires with the certificate, so a name frees itself when its holder's identity could
no longer be used. Identities the auth host issues itself (its own proxy and node)
replace the entry. `cgctl rm node/NAME` deletes it: the name is free to join again,
and the old holder's heartbeats stop counting (they no longer match the entry).

Every heartbeat asks who holds its name (`holder`): at 10,000 nodes that was a store
read per beat, half of auth's time. `holder` answers from memory instead, kept correct
two ways: this process's own claims, replacements and releases drop the entry at once,
and a store watch on `/host_names/` drops entries that other processes (auth workers,
other auth instances) change, within the store's watch latency. An entry read while a
change was on its way is not kept (a generation count), and while the watch is down
nothing is cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from certgate.backend.base import Backend, Item
from certgate.clock import Clock, SystemClock
from certgate.errors import CertgateError, NotFound

log = logging.getLogger("certgate.host_names")

PREFIX = "/host_names/"


class HostName(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    name: str
    # The holder's certificate, as it says: notBefore (whole seconds) and notAfter.
    issued: datetime
    expires: datetime
    addr: str = ""  # where the holder joined from, for the refusal message


class HostNames:
    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self._backend = backend
        self._clock = clock or SystemClock()
        # The holders `holder` read, by key; only while the watch follows the store.
        self._held: dict[str, HostName] = {}
        self._generation = 0  # bumped on every change seen: a read that spans one is not kept
        self._watching = False
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _key(role: str, name: str) -> str:
        return f"{PREFIX}{role}/{name}"

    async def start(self) -> None:
        """Follow the store's changes to names, so `holder` can answer from memory."""
        revision = await self._backend.current_revision()
        self._task = asyncio.create_task(self._follow(revision), name="host names")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._watching = False
        self._held.clear()

    def _changed(self, key: str | None) -> None:
        self._generation += 1
        if key is None:
            self._held.clear()
        else:
            self._held.pop(key, None)

    @contextlib.asynccontextmanager
    async def _changing(self, key: str) -> AsyncIterator[None]:
        # Before and after: a `holder` read that overlaps the write in any way is not kept.
        self._changed(key)
        try:
            yield
        finally:
            self._changed(key)

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                self._watching = True
                async for event in self._backend.watch([PREFIX], revision):
                    revision = event.item.revision
                    self._changed(event.item.key)
                return  # the backend closed
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Compacted past us, store unreachable, a bug: forget everything and
                # read through until the watch is back.
                self._watching = False
                self._changed(None)
                log.warning(
                    "host names watch lost, reading names from the store: %s",
                    exc,
                    exc_info=not isinstance(exc, CertgateError),
                )
                await asyncio.sleep(1.0)
                try:
                    revision = await self._backend.current_revision()
                except CertgateError:
                    continue
            finally:
                self._watching = False

    async def holder(self, role: str, name: str) -> HostName | None:
        """Who holds `name`, from memory when the store watch vouches for it (heartbeats)."""
        key = self._key(role, name)
        held = self._held.get(key)
        if held is not None and self._watching:
            if held.expires > self._clock.now():
                return held
            self._held.pop(key, None)
        generation = self._generation
        found = await self.get(role, name)
        if found is not None and self._watching and generation == self._generation:
            self._held[key] = found
        return found

    def _item(self, entry: HostName) -> Item:
        return Item(
            key=self._key(entry.role, entry.name),
            value=entry.model_dump_json().encode(),
            expires=entry.expires,
        )

    async def get(self, role: str, name: str) -> HostName | None:
        try:
            item = await self._backend.get(self._key(role, name))
        except NotFound:
            return None
        return HostName.model_validate_json(item.value)

    async def claim(self, entry: HostName) -> None:
        """Take a free name; AlreadyExists if a live identity holds it."""
        async with self._changing(self._key(entry.role, entry.name)):
            await self._backend.create(self._item(entry))

    async def replace(self, entry: HostName) -> None:
        """Take the name whoever holds it (identities the auth host issues itself)."""
        async with self._changing(self._key(entry.role, entry.name)):
            await self._backend.put(self._item(entry))

    async def release(self, role: str, name: str) -> bool:
        try:
            async with self._changing(self._key(role, name)):
                await self._backend.delete(self._key(role, name))
        except NotFound:
            return False
        return True
