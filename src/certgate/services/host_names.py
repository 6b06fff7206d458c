"""Which host identity holds each service name, so a join token cannot take one over.

    /host_names/<role>/<name>   HostName: the holder's certificate issue time and expiry

A join creates the entry (create fails if present: of two racing joins one wins); it
expires with the certificate, so a name frees itself when its holder's identity could
no longer be used. Registering an agentless node creates one too (`agentless`, never
expiring), so no join can take an admin's node. Identities the auth host issues itself
(its own proxy and node) replace the entry. `cgctl rm node/NAME` deletes it: the name
is free to join again, and the old holder's heartbeats stop counting (they no longer
match the entry).

Every heartbeat asks who holds its name (`holder`): at 10,000 nodes that was a store
read per beat, half of auth's time. `holder` answers from memory instead, kept correct
two ways: this process's own claims, replacements and releases drop the entry at once,
and a store watch on `/host_names/` drops entries that other processes (auth workers,
other auth instances) change, within the store's watch latency. An entry read while a
change was on its way is not kept (a generation count), and while the watch is down
nothing is cached.

After an auth restart every node comes back within seconds, and each beat missed the
empty cache: on PostgreSQL 10,000 reads, one pooled connection each, held the whole
pool, and auth's own services could not get a connection to become ready. So the cache
is filled with one range read of `/host_names/` whenever the watch (re)starts, read
after the revision the watch starts from (events may repeat what the read saw, never
skip past it), and misses that arrive together are read together: while one read is
out, later misses wait and go in the next `get_many`.

    holder(a) miss ─┐
    holder(b) miss ─┼─► wanted ─► reader task: get_many([a, b, c]) ─► each caller
    holder(c) miss ─┘
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from certgate.backend.base import Backend, Item
from certgate.clock import Clock, SystemClock
from certgate.errors import CertgateError, ConnectionProblem, NotFound
from certgate.services.settle import settle
from certgate.tasks import log_failure

log = logging.getLogger("certgate.host_names")

PREFIX = "/host_names/"
# Keys per batched read of missed names (one `get_many`, one statement).
MAX_READ = 1000
RETRY_DELAY = 1.0
# An agentless node's claim: held until an admin removes the node.
NEVER = datetime(9999, 12, 31, tzinfo=UTC)


class HostName(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    name: str
    # The holder's certificate, as it says: notBefore (whole seconds) and notAfter.
    issued: datetime
    expires: datetime
    addr: str = ""  # where the holder joined from, for the refusal message
    # An agentless node an admin registered (`cgctl create`): no identity holds the name,
    # and it never expires; `cgctl rm node/NAME` frees it.
    agentless: bool = False

    @classmethod
    def agentless_node(cls, name: str, registered: datetime) -> HostName:
        return cls(role="node", name=name, issued=registered, expires=NEVER, agentless=True)


class HostNames:
    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self._backend = backend
        self._clock = clock or SystemClock()
        # The holders `holder` read, by key; only while the watch follows the store.
        self._held: dict[str, HostName] = {}
        self._generation = 0  # bumped on every change seen: a read that spans one is not kept
        self._watching = False
        self._task: asyncio.Task[None] | None = None
        # Missed keys waiting for the next batched read, each with its callers' futures.
        self._wanted: dict[str, list[asyncio.Future[Item | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.reads = 0  # store reads made for misses (for tests and benchmarks)

    @staticmethod
    def _key(role: str, name: str) -> str:
        return f"{PREFIX}{role}/{name}"

    async def start(self) -> None:
        """Read every name once and follow the store's changes, so `holder` can answer
        from memory."""
        loaded = await self._load()
        self._task = asyncio.create_task(self._follow(*loaded), name="host names")

    async def close(self) -> None:
        for task in (self._task, self._reader):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._watching = False
        self._held.clear()

    async def _load(self) -> tuple[int, dict[str, HostName], int]:
        """The revision to watch from, then every name held at it or later (one range
        read), and the generation before the read: kept only if nothing changed since."""
        revision = await self._backend.current_revision()
        generation = self._generation
        items = await self._backend.range(PREFIX)
        now = self._clock.now()
        held: dict[str, HostName] = {}
        for item in items:
            try:
                entry = HostName.model_validate_json(item.value)
            except ValueError:
                continue  # a bad entry is read (and refused) on its own, never cached
            if entry.expires > now:
                held[item.key] = entry
        return revision, held, generation

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

    async def _follow(self, revision: int, held: dict[str, HostName], generation: int) -> None:
        while True:
            try:
                if generation == self._generation:  # no change of ours since the read
                    self._held = held
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
            finally:
                self._watching = False
            while True:
                await asyncio.sleep(RETRY_DELAY)
                try:
                    revision, held, generation = await self._load()
                    break
                except CertgateError as exc:
                    log.warning("host names cannot reload yet: %s", exc)

    async def holder(self, role: str, name: str) -> HostName | None:
        """Who holds `name`, from memory when the store watch vouches for it (heartbeats)."""
        key = self._key(role, name)
        held = self._held.get(key)
        if held is not None and self._watching:
            if held.expires > self._clock.now():
                return held
            self._held.pop(key, None)
        generation = self._generation
        item = await self._read(key)
        found = None if item is None else HostName.model_validate_json(item.value)
        if found is not None and self._watching and generation == self._generation:
            self._held[key] = found
        return found

    async def _read(self, key: str) -> Item | None:
        """`key`'s item, read with the other misses waiting now (one `get_many`). The
        read starts after this call: it is as fresh as a read of its own."""
        done: asyncio.Future[Item | None] = asyncio.get_running_loop().create_future()
        self._wanted.setdefault(key, []).append(done)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_wanted(), name="host names reads")
            self._reader.add_done_callback(log_failure(log, "host names reader"))
        return await done

    async def _read_wanted(self) -> None:
        while self._wanted:
            keys = list(self._wanted)[:MAX_READ]
            waiting = [(key, self._wanted.pop(key)) for key in keys]
            self.reads += 1
            try:
                found = {item.key: item for item in await self._backend.get_many(keys)}
            except asyncio.CancelledError:  # closing: nobody is left waiting for ever
                stopping = ConnectionProblem("auth is stopping")
                for futures in [*(f for _, f in waiting), *self._wanted.values()]:
                    settle(futures, [stopping] * len(futures))
                self._wanted.clear()
                raise
            except Exception as exc:  # each caller hears of it, as from a read of its own
                outcomes: list[Item | Exception | None] = [exc] * len(keys)
            else:
                outcomes = [found.get(key) for key in keys]
            for (_, futures), outcome in zip(waiting, outcomes, strict=True):
                settle(futures, [outcome] * len(futures))

    def _item(self, entry: HostName) -> Item:
        return Item(
            key=self._key(entry.role, entry.name),
            value=entry.model_dump_json().encode(),
            expires=None if entry.agentless else entry.expires,
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
