"""One store watch per set of prefixes, shared by every watcher of that set.

Every node holds a watch stream on auth (roles, locks, CAs), every proxy one more. Each
used to be its own `backend.watch`: on every write — a heartbeat, many per second at
10,000 nodes — each of them woke up and queried the store for its prefixes, thousands of
queries per write on one SQLite thread, and heartbeats stalled behind them. Now auth
reads the store once per set of prefixes and hands each event to every subscriber:

    backend.watch(role, lock, cert_authority) ──► Feed ──► subscriber (node 1 stream)
                                                      ├──► subscriber (node 2 stream)
                                                      └──► ...
    backend.watch(role, lock, node, ...)      ──► Feed ──► subscriber (proxy stream)

    async with hub.subscribe(prefixes) as events:   # before the snapshot is read
        snapshot = ...                              # events may repeat it, never skip past it
        async for event in events: ...              # or anext(events), then events.ready()

A feed starts with its first subscriber and stops with its last. A subscriber that falls
`QUEUE_LIMIT` events behind, or a feed whose store watch fails (compacted, store
unreachable), ends its streams: watchers reconnect and take a fresh snapshot, as after
any broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence

from certgate.backend.base import Backend, Event
from certgate.errors import CertgateError, LimitExceeded

log = logging.getLogger("certgate.auth.watch")

# Events one subscriber may have waiting; past it its stream ends (it reconnects).
QUEUE_LIMIT = 50_000


class _Subscriber:
    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.failure: BaseException | None = None
        self.ended = False
        self.ready = asyncio.Event()

    def offer(self, event: Event) -> None:
        if self.failure is not None:
            return
        if len(self.events) >= QUEUE_LIMIT:
            self.fail(LimitExceeded(f"watcher fell {QUEUE_LIMIT} events behind"))
            return
        self.events.append(event)
        self.ready.set()

    def fail(self, failure: BaseException | None) -> None:
        """End the stream: with `failure`, or cleanly (None) when the store closes."""
        if failure is None:
            self.ended = True
        else:
            self.failure = failure
        self.ready.set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            while self.events:
                yield self.events.popleft()
            if self.failure is not None:
                raise self.failure
            if self.ended:
                return
            self.ready.clear()
            await self.ready.wait()


class Subscription:
    """One subscriber's events: `async for event in it`, or `anext(it)` and then
    `ready()` for the events already queued behind that one, taken at once. A watch
    stream writes those in one go: at 10,000 nodes the proxy's stream carried a
    heartbeat per write, each a TLS record the proxy read and parsed on its own."""

    def __init__(self, subscriber: _Subscriber) -> None:
        self._subscriber = subscriber
        self._events = aiter(subscriber)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await anext(self._events)

    def ready(self) -> list[Event]:
        """The events queued now, in order, taken off the queue (none waited for). A
        failure or end behind them comes from the next `anext`, as it would have."""
        taken = list(self._subscriber.events)
        self._subscriber.events.clear()
        return taken


class _Feed:
    """One store watch, fanned out to its subscribers."""

    def __init__(self, backend: Backend, prefixes: tuple[str, ...]) -> None:
        self._backend = backend
        self._prefixes = prefixes
        self.key = prefixes
        self.subscribers: set[_Subscriber] = set()
        self.task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        # What was built from the store under these prefixes (a watch snapshot) and the
        # revision it is at least at, kept until the next event; `changes` counts
        # events, so a build that an event overtook is not kept.
        self.memo: dict[Hashable, tuple[int, bytes]] = {}
        self.changes = 0
        # Every event up to this revision has reached the feed (the revision it
        # started at, then each event's): a store read begun now sees them all.
        self.revision = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="watch feed")

    async def started(self) -> None:
        """Once the feed follows the store (or raises why it could not start)."""
        assert self.task is not None
        waiting = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({waiting, self.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if not self._started.is_set():
            self.task.result()  # raises what ended it
            raise CertgateError("the watch feed ended before it started")

    async def _run(self) -> None:
        # From the newest revision now: a subscriber reads its snapshot after this.
        revision = self.revision = await self._backend.current_revision()
        self._started.set()
        failure: BaseException | None = None
        events = self._backend.watch(list(self._prefixes), revision)
        try:
            async for event in events:
                self.changes += 1
                self.revision = event.item.revision
                self.memo.clear()
                for subscriber in self.subscribers:
                    subscriber.offer(event)
        except CertgateError as exc:
            failure = exc
        except Exception as exc:  # a bug: keep the trace, and still end the streams
            log.exception("watch feed of %s failed", ",".join(self._prefixes))
            failure = exc
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        for subscriber in self.subscribers:
            subscriber.fail(failure)


def _key(prefixes: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(prefixes)))


class WatchHub:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._feeds: dict[tuple[str, ...], _Feed] = {}
        self._closed = False
        self._streams = 0  # subscribers not yet gone (their handlers still running)
        self._drained = asyncio.Event()

    def close(self) -> None:
        """End every stream cleanly, now and from now on (auth is stopping): each ends
        as its watcher expects one to, and reconnects (to another auth if there is
        one). Left to the HTTP server, each stream was a request in progress to wait
        out and then cut: with thousands, auth took over 15 s to stop."""
        self._closed = True
        for feed in self._feeds.values():
            for subscriber in feed.subscribers:
                subscriber.fail(None)
        if self._streams == 0:
            self._drained.set()

    async def drained(self, timeout: float) -> bool:
        """After `close`: wait up to `timeout` seconds for every stream's handler to
        finish (False if some had not). A stream ended by `close` finishes as soon as
        its handler runs again; waited for here, each is done before the HTTP server
        shuts its connections down, rather than one of thousands it waits out and
        then cancels (auth took 5-10 s to stop at 10,000 nodes)."""
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def memo(
        self, prefixes: Sequence[str], key: Hashable, build: Callable[[], Awaitable[bytes]]
    ) -> tuple[int, bytes]:
        """`build()`'s answer and the revision it is at, shared by subscribers of
        `prefixes` until the next event under them (call it inside `subscribe`). When
        10,000 nodes reconnect, each used to read, decode and encode the same roles,
        locks and CAs for its snapshot, and read the store's revision for its header.

        The revision is the feed's when the build began: every event up to it is in
        the answer (the build read the store after the feed had them), later ones may
        be too. A stream resumed from it may see an event again, never miss one. A
        subscriber may get an answer built before an event it will still receive (the
        feed had not delivered it yet): its snapshot is older, never newer, than its
        stream, as when it reads the store itself.
        """
        feed = self._feeds[_key(prefixes)]
        if (kept := feed.memo.get(key)) is not None:
            return kept
        changes, revision = feed.changes, feed.revision
        built = (revision, await build())
        if feed.changes == changes and self._feeds.get(feed.key) is feed:
            feed.memo[key] = built
        return built

    @contextlib.asynccontextmanager
    async def subscribe(self, prefixes: Sequence[str]) -> AsyncIterator[Subscription]:
        """Every event under `prefixes` from now on, in revision order."""
        key = _key(prefixes)
        feed = self._feeds.get(key)
        if feed is None or feed.task is None or feed.task.done():
            feed = _Feed(self._backend, key)
            self._feeds[key] = feed
            feed.start()
        subscriber = _Subscriber()
        if self._closed:
            subscriber.fail(None)
        feed.subscribers.add(subscriber)
        self._streams += 1
        try:
            await feed.started()
            yield Subscription(subscriber)
        finally:
            feed.subscribers.discard(subscriber)
            try:
                if not feed.subscribers and self._feeds.get(key) is feed:
                    del self._feeds[key]
                    if feed.task is not None:
                        feed.task.cancel()
                        await asyncio.gather(feed.task, return_exceptions=True)
            finally:
                self._streams -= 1
                if self._closed and self._streams == 0:
                    self._drained.set()
