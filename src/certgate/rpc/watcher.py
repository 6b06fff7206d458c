"""A live, in-memory view of some resource kinds, fed by auth's watch stream.

Proxies and nodes decide from this view (roles, locks, nodes), so they keep deciding
while auth is briefly unreachable, and they learn of a new lock within milliseconds.

    view = ResourceView(client, ["role", "lock"], on_change=...)
    view.start()                 # connects, takes a snapshot, follows changes, reconnects
    view.get("role", "dev")      # the current resource, or None
    view.seconds_since_contact() # how stale the view may be (for strict locking)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from certgate.api.codec import KINDS
from certgate.api.names import shown
from certgate.errors import ConnectionProblem, from_json
from certgate.rpc.auth_client import AsyncAuthClient, NotASocket
from certgate.rpc.failover import Backoff

log = logging.getLogger("certgate.watch")

RECONNECT_BASE = 0.5  # seconds: the first retry comes within this
RECONNECT_CAP = 10.0
# How long a service waits for its first snapshot before it gives up starting.
READY_TIMEOUT = 300.0
# The largest message auth may send down the socket: a snapshot of every role, lock and
# CA (a plain stream's line has no such bound; 64 MiB is far beyond any real one).
MAX_MESSAGE = 64 * 1024 * 1024

ChangeCallback = Callable[[str, str, BaseModel | None], Awaitable[None]]

# Keep-alive pings a watcher asks auth for. A ping tells a quiet stream from a dead one
# (strict locking refuses after `strict_grace` without word from auth), but at 10,000
# node streams one a second each was 10,000 writes a second on auth and on the nodes.
MAX_PING_SECONDS = 5.0


def silence_seconds(ping_every: float) -> float:
    """How long a stream may stay silent before it is taken for dead: three pings.
    One ping's worth (5 s for 5 s pings) dropped streams whenever a busy auth was a
    little late, and each reconnect cost auth another TLS handshake. Strict locking
    does not lean on this: it counts from the last word (`seconds_since_contact`)."""
    return max(5.0, 3 * ping_every)


def ping_seconds(strict_grace: float) -> float:
    """Pings often enough that several fit in the strict-locking grace, at most every
    5 s and at least every second: 5 s for the default grace of 30 s."""
    return max(1.0, min(MAX_PING_SECONDS, strict_grace / 6))


class ResourceView:
    def __init__(
        self,
        client: AsyncAuthClient,
        kinds: list[str],
        on_change: ChangeCallback | None = None,
        path: str = "/v1/watch",  # through a proxy, as a user: /v1/api/watch
        ping_every: float = 1.0,  # ping_seconds(strict_grace)
        carries_requests: bool = False,  # a WebSocket that also takes `ask` (heartbeats)
    ) -> None:
        self._client = client
        self._path = path
        self._params = {"kinds": ",".join(kinds)}
        if ping_every != 1.0:  # auth's default: older auths need not know the parameter
            self._params["ping"] = f"{ping_every:g}"
        self._silence = silence_seconds(ping_every)
        self._kinds = kinds
        self._on_change = on_change
        self._items: dict[str, dict[str, BaseModel]] = {kind: {} for kind in kinds}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_contact = 0.0
        # What auth's last ping said: seconds it is behind its store (0: on schedule).
        self.auth_behind = 0.0
        # The auth this watch follows, and the client's served_mark when it connected.
        self._watching = ""
        self._served_mark = 0
        self._last_error = ""
        self._what = ",".join(kinds)
        self.connected = False
        # The WebSocket form (auth/watch_channel.py): one connection for the watch and the
        # service's heartbeats. Dropped for the plain stream if auth does not know it.
        self._wants_socket = carries_requests
        self._socket: Any = None  # the open aiohttp ClientWebSocketResponse
        self._carrying = asyncio.Event()  # set while `ask` can go
        self._asked: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch {','.join(self._kinds)}")
        self._task.add_done_callback(_log_crash)

    async def wait_ready(self, timeout: float = READY_TIMEOUT, report_every: float = 10) -> None:
        """Wait for the first snapshot, saying so every `report_every` seconds.

        An auth that is busy (thousands of nodes coming back after its restart) or still
        starting can take a while to answer: a service keeps waiting, one log line at a
        time, and gives up after `timeout` with a one-line error, never a traceback.
        """
        started = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise ConnectionProblem(
                    f"no snapshot of {self._what} from auth within {timeout:g}s"
                    + (f" (last error: {self._last_error})" if self._last_error else "")
                )
            try:
                async with asyncio.timeout(min(report_every, left)):
                    await self._ready.wait()
                return
            except TimeoutError:
                log.warning(
                    "still waiting for auth's first snapshot of %s (%.0fs so far%s)",
                    self._what,
                    time.monotonic() - started,
                    f"; last error: {self._last_error}" if self._last_error else "",
                )

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def get(self, kind: str, name: str) -> BaseModel | None:
        return self._items[kind].get(name)

    def all(self, kind: str) -> list[BaseModel]:
        return list(self._items[kind].values())

    def seconds_since_contact(self) -> float:
        """How old the view may be: seconds since auth last said anything, or more if
        auth said it was behind its store (an auth cut off from a shared database
        keeps pinging, but what other auth processes wrote since is missing)."""
        return time.monotonic() - self._last_contact if self._last_contact else float("inf")

    def _heard(self, message: dict[str, Any]) -> None:
        if message.get("type") != "ping":
            self._last_contact = time.monotonic()
            return
        behind = message.get("behind", 0)
        if not isinstance(behind, int | float) or not 0 <= behind < 1e9:
            behind = 0  # not a number of seconds: the ping still says auth is there
        self.auth_behind = float(behind)
        self._last_contact = time.monotonic() - behind
        if behind:
            self._move_if_another_serves()

    def _connected(self) -> None:
        self._watching = self._client.base_url
        self._served_mark = self._client.served_mark()

    def _move_if_another_serves(self) -> None:
        """This watch's auth is behind its store (cut off from a shared database): if
        another auth has served one of this service's calls since the watch began
        (its heartbeats go as calls meanwhile, and pass over an auth that refuses them),
        follow that one instead, so locks made through it reach this service.

        Only on that evidence: in an outage of the database itself every auth is behind
        and refuses alike, nothing is served elsewhere, and no watch moves (10,000 nodes
        hopping between auths would be a reconnect storm for nothing)."""
        serving = self._client.served_since(self._served_mark)
        if serving is not None and serving != self._watching:
            raise ConnectionProblem(
                f"{self._watching} is {self.auth_behind:.0f}s behind its store and"
                f" {serving} serves: moving the watch there"
            )

    async def _run(self) -> None:
        # Full jitter: when an auth restarts, every watcher of it drops at once; spread
        # over the whole window, they do not all come back in the same second. The cap
        # stays well under the strict-locking grace (30 s by default).
        backoff = Backoff(base=RECONNECT_BASE, cap=RECONNECT_CAP)
        while True:
            try:
                await self._follow()
            except Exception as exc:  # refusals, transport errors, a broken stream alike
                self._last_error = str(exc)
                log.warning("watch of %s lost: %s", self._what, exc)
            if self.connected:  # it got as far as a snapshot: start the window over
                backoff.reset()
            self.connected = False
            await asyncio.sleep(backoff.next())

    @property
    def carries_requests(self) -> bool:
        """Whether `ask` can go now: the view is connected over a WebSocket."""
        return self._carrying.is_set()

    async def carrying_within(self, seconds: float) -> bool:
        """Whether `ask` can go within `seconds`: at once if the socket is up; if it is
        being reconnected, once it is back. False at once for a view that does not use
        the socket form (not asked for, or auth does not know it)."""
        if not self._wants_socket:
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._carrying.wait()
        except TimeoutError:
            return False
        return True

    async def ask(self, request: dict[str, Any], timeout: float) -> None:
        """Send `request` (`{"type": "heartbeat", ...}`) up the watch's socket and wait
        for auth's answer; its refusal is raised as the certgate error it is.
        ConnectionProblem if the socket is not there or goes before the answer: the
        caller may send the same by a plain call."""
        socket = self._socket
        if socket is None or not self.carries_requests:
            raise ConnectionProblem("the watch carries no requests now")
        self._next_id += 1
        ident = self._next_id
        answered = asyncio.get_running_loop().create_future()
        self._asked[ident] = answered
        try:
            await socket.send_bytes(json.dumps({**request, "id": ident}).encode())
            async with asyncio.timeout(timeout):
                await answered
        except TimeoutError:
            raise ConnectionProblem(f"auth did not answer within {timeout:g}s") from None
        except (ConnectionError, RuntimeError) as exc:  # closed under the send
            raise ConnectionProblem(f"the watch socket went: {exc}") from exc
        finally:
            self._asked.pop(ident, None)

    def _answered(self, message: dict[str, Any]) -> None:
        answered = self._asked.get(message.get("id"))  # type: ignore[arg-type]
        if answered is None or answered.done():
            return  # asked by a socket before this one, or given up on
        error = message.get("error")
        if error is None:
            answered.set_result(None)
        else:
            answered.set_exception(from_json(0, error))

    async def _follow(self) -> None:
        self.auth_behind = 0.0  # a new connection, perhaps to another auth
        if self._wants_socket:
            try:
                await self._follow_socket()
                return
            except NotASocket as exc:
                log.warning("%s; watching with the plain stream", exc)
                self._wants_socket = False
        stream = self._client.stream("GET", self._path, params=self._params, silence=self._silence)
        async with stream as lines:
            self._connected()
            async for line in lines:
                message = json.loads(line)
                self._heard(message)
                await self._apply(message)

    async def _follow_socket(self) -> None:
        from aiohttp import WSMsgType  # services only: cgsh imports this module

        async with self._client.websocket(self._path, self._params, MAX_MESSAGE) as socket:
            self._connected()
            self._socket = socket
            try:
                while True:
                    try:
                        message = await socket.receive(timeout=self._silence)
                    except TimeoutError:
                        raise ConnectionProblem(
                            f"the watch was silent for {self._silence:g}s"
                        ) from None
                    if message.type is not WSMsgType.BINARY:
                        if message.type is WSMsgType.ERROR:
                            raise ConnectionProblem(f"the watch broke: {socket.exception()}")
                        raise ConnectionProblem("auth closed the watch")
                    for line in message.data.splitlines():
                        document = json.loads(line)
                        self._heard(document)
                        if document["type"] == "answer":
                            self._answered(document)
                        else:
                            await self._apply(document)
            finally:
                self._socket = None
                self._carrying.clear()
                gone = ConnectionProblem("the watch socket closed before auth answered")
                for answered in self._asked.values():
                    if not answered.done():
                        answered.set_exception(gone)

    async def _apply(self, message: dict[str, Any]) -> None:
        kind_of = message["type"]
        if kind_of == "snapshot":
            fresh: dict[str, dict[str, BaseModel]] = {}
            for kind, docs in message["items"].items():
                valid = (_resource(kind, doc) for doc in docs)
                fresh[kind] = {r.metadata.name: r for r in valid if r is not None}  # type: ignore[attr-defined]
            old = self._items
            self._items = {kind: fresh.get(kind, {}) for kind in self._kinds}
            self.connected = True
            self._ready.set()
            if self._socket is not None:
                self._carrying.set()
            for kind in self._kinds:
                for name, resource in self._items[kind].items():
                    if old[kind].get(name) != resource:
                        await self._notify(kind, name, resource)
                for name in set(old[kind]) - set(self._items[kind]):
                    await self._notify(kind, name, None)
        elif kind_of == "put":
            kind = message["kind"]
            put = _resource(kind, message["resource"])
            if put is None:
                return  # skipped (and logged): the stream and the rest of the view go on
            name = put.metadata.name  # type: ignore[attr-defined]
            self._items[kind][name] = put
            await self._notify(kind, name, put)
        elif kind_of == "delete":
            kind, name = message["kind"], message["name"]
            self._items[kind].pop(name, None)
            await self._notify(kind, name, None)

    async def _notify(self, kind: str, name: str, resource: BaseModel | None) -> None:
        if self._on_change is not None:
            try:
                await self._on_change(kind, name, resource)
            except Exception:
                log.exception("handling a change of %s/%s failed", kind, name)


def _resource(kind: str, document: Any) -> BaseModel | None:
    """The resource in `document`, or None (logged) if it does not validate.

    One bad item — written by an older version, or straight into the store — must not
    stop the view: a lock that follows it still has to arrive.
    """
    try:
        return KINDS[kind].model_validate(document)
    except (ValidationError, ValueError, KeyError) as exc:
        name = document.get("metadata", {}).get("name") if isinstance(document, dict) else None
        log.error("skipping a %s from auth that does not validate (%s): %s", kind, shown(name), exc)
        return None


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("watch task ended: %s", task.exception())
