"""ResourceView: an item from auth that does not validate is skipped, never the stream.

Auth leaves bad stored items out itself (tests/integration/
test_bad_stored_item_does_not_stop_locks.py); this is the view's own guard, for an auth
of another version. The auth side here replays a recorded stream.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from certgate.errors import ConnectionProblem
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.watcher import ResourceView, silence_seconds
from tests.support.wait import eventually_async


def lock(name: str, user: str = "bob", expires: str | None = None) -> dict[str, Any]:
    return {
        "kind": "lock",
        "version": "v1",
        "metadata": {"name": name, "expires": expires},
        "spec": {"target": {"user": user}},
    }


FAR = "9999-12-31T23:59:59-23:59"


class _Auth:
    base_url = "https://auth.test"

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.lines = [json.dumps(m) for m in messages]
        self.done = asyncio.Event()

    def served_mark(self) -> int:
        return 0

    def served_since(self, mark: int) -> str | None:
        return None

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, params: Any = None, silence: float = 5.0
    ) -> AsyncIterator[AsyncIterator[str]]:
        async def lines() -> AsyncIterator[str]:
            for line in self.lines:
                yield line
            self.done.set()
            await asyncio.Event().wait()  # the stream stays open, as auth's does

        yield lines()


async def test_bad_items_are_skipped_and_later_ones_still_arrive() -> None:
    auth = _Auth(
        [
            {
                "type": "snapshot",
                "revision": 1,
                "items": {"lock": [lock("far", expires=FAR), lock("ok-1"), {"junk": True}]},
            },
            {"type": "put", "kind": "lock", "resource": lock("far-2", expires=FAR)},
            {"type": "put", "kind": "lock", "resource": lock("bad-user", user="bob\n")},
            {"type": "put", "kind": "lock", "resource": lock("ok-2", user="carol")},
        ]
    )
    view = ResourceView(auth, ["lock"])  # type: ignore[arg-type]
    view.start()
    try:
        await view.wait_ready(timeout=5)
        await asyncio.wait_for(auth.done.wait(), 5)
        assert sorted(x.metadata.name for x in view.all("lock")) == ["ok-1", "ok-2"]  # type: ignore[attr-defined]
        assert view.connected
    finally:
        await view.close()


class _SlowAuth(_Auth):
    """Answers the watch with its snapshot only once `release` is set (a busy auth)."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        super().__init__(messages)
        self.release = asyncio.Event()

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, params: Any = None, silence: float = 5.0
    ) -> AsyncIterator[AsyncIterator[str]]:
        await self.release.wait()
        async with super().stream(method, path, params) as lines:
            yield lines


async def test_a_slow_first_snapshot_is_waited_for_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Auth with thousands of nodes coming back took over 10 s to send a proxy its first
    # snapshot; the proxy died with a raw TimeoutError. It now says so and keeps waiting.
    auth = _SlowAuth([{"type": "snapshot", "revision": 1, "items": {"lock": [lock("ok")]}}])
    view = ResourceView(auth, ["lock"])  # type: ignore[arg-type]
    view.start()
    waiting = asyncio.create_task(view.wait_ready(timeout=60, report_every=0.2))
    try:
        await eventually_async(
            lambda: "still waiting for auth's first snapshot of lock" in caplog.text
        )
        assert not waiting.done()
        auth.release.set()
        await asyncio.wait_for(waiting, 5)
        assert [x.metadata.name for x in view.all("lock")] == ["ok"]  # type: ignore[attr-defined]
    finally:
        waiting.cancel()
        await view.close()


async def test_no_snapshot_at_all_is_a_one_line_error_not_a_timeout() -> None:
    auth = _SlowAuth([])  # never answers
    view = ResourceView(auth, ["role", "lock"])  # type: ignore[arg-type]
    view.start()
    try:
        with pytest.raises(ConnectionProblem, match=r"^no snapshot of role,lock from auth within"):
            await view.wait_ready(timeout=0.5, report_every=0.2)
    finally:
        await view.close()


LATE_PING = 6.5  # seconds: past one 5 s ping interval, within three


async def test_a_late_ping_from_a_busy_auth_does_not_drop_the_stream() -> None:
    # With 5 s pings the stream counted as dead after 5 silent seconds: a busy auth one
    # moment late cost every node a reconnect and a TLS handshake, making it busier.
    assert silence_seconds(5.0) == 15.0
    assert silence_seconds(1.0) == 5.0
    streams = []
    pinged = asyncio.Event()

    async def watch(request: web.Request) -> web.StreamResponse:
        streams.append(request)
        answer = web.StreamResponse()
        await answer.prepare(request)
        snapshot = {"type": "snapshot", "revision": 1, "items": {"lock": [lock("ok")]}}
        await answer.write(json.dumps(snapshot).encode() + b"\n")
        await asyncio.sleep(LATE_PING)
        await answer.write(b'{"type": "ping"}\n')
        pinged.set()
        await asyncio.Event().wait()
        return answer

    async with _view_of(watch, ping_every=5.0) as view:
        await asyncio.wait_for(pinged.wait(), LATE_PING + 5)
        await eventually_async(lambda: view.seconds_since_contact() < 1)
        assert view.connected
        assert len(streams) == 1  # it would have been 2 had the late ping dropped it


@asynccontextmanager
async def _view_of(handler: Any, **options: Any) -> AsyncIterator[ResourceView]:
    """A lock view (ResourceView `options`) of an auth stand-in on loopback that answers
    the watch with `handler`, started and ready."""
    app = web.Application()
    app.router.add_get("/v1/watch", handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = AsyncAuthClient(f"http://127.0.0.1:{port}", ssl.create_default_context())
    view = ResourceView(client, ["lock"], **options)
    view.start()
    try:
        await view.wait_ready(timeout=10)
        yield view
    finally:
        await view.close()
        await client.close()
        await runner.cleanup()


async def test_an_auth_without_the_socket_form_is_watched_with_the_plain_stream() -> None:
    # An auth of an earlier version answers the socket request with its plain stream:
    # the service watches that way, and its heartbeats go as calls.
    asked = []

    async def watch(request: web.Request) -> web.StreamResponse:
        asked.append(request.headers.get("Upgrade", ""))
        answer = web.StreamResponse()
        await answer.prepare(request)
        snapshot = {"type": "snapshot", "revision": 1, "items": {"lock": [lock("plain")]}}
        await answer.write(json.dumps(snapshot).encode() + b"\n")
        await asyncio.Event().wait()
        return answer

    async with _view_of(watch, carries_requests=True) as view:
        assert [x.metadata.name for x in view.all("lock")] == ["plain"]  # type: ignore[attr-defined]
        assert asked == ["websocket", ""]  # tried once, then plain
        assert not view.carries_requests
        with pytest.raises(ConnectionProblem, match="carries no requests"):
            await view.ask({"type": "heartbeat"}, timeout=1)


async def test_a_request_pending_when_the_socket_drops_fails_at_once() -> None:
    # The heartbeat waiting for its answer learns the socket went (and is sent as a
    # call), rather than waiting out its timeout while the node drops from the list.
    sockets: list[web.WebSocketResponse] = []

    async def watch(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sockets.append(socket)
        snapshot = {"type": "snapshot", "revision": 1, "items": {"lock": []}}
        await socket.send_bytes(json.dumps(snapshot).encode() + b"\n")
        await socket.receive()  # the request, never answered
        assert request.transport is not None
        request.transport.close()
        return socket

    async with _view_of(watch, carries_requests=True) as view:
        await eventually_async(lambda: view.carries_requests)
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionProblem, match="closed before auth answered"):
            await view.ask({"type": "heartbeat"}, timeout=30)
        assert asyncio.get_running_loop().time() - started < 10


async def test_a_ping_from_an_auth_behind_its_store_ages_the_view() -> None:
    # An auth cut off from a shared store keeps pinging, but says how far behind it is:
    # the view is that much older, so strict locking refuses once the grace is spent.
    # A ping without a usable number still says auth is there.
    send: asyncio.Queue[bytes] = asyncio.Queue()

    async def watch(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse()
        await answer.prepare(request)
        snapshot = {"type": "snapshot", "revision": 1, "items": {"lock": []}}
        await answer.write(json.dumps(snapshot).encode() + b"\n")
        while True:
            await answer.write(await send.get())

    async with _view_of(watch) as view:
        assert view.seconds_since_contact() < 1
        await send.put(b'{"type": "ping", "behind": 40.5}\n')
        await eventually_async(lambda: view.seconds_since_contact() >= 40.5)
        assert view.auth_behind == 40.5  # the node's heartbeats go as calls meanwhile
        await send.put(b'{"type": "ping"}\n')
        await eventually_async(lambda: view.seconds_since_contact() < 1)
        assert view.auth_behind == 0
        for bad in (b'"forty"', b"-5", b"1e300", b"NaN", b"null"):
            await send.put(b'{"type": "ping", "behind": 40}\n')
            await eventually_async(lambda: view.seconds_since_contact() >= 40)
            await send.put(b'{"type": "ping", "behind": ' + bad + b"}\n")
            await eventually_async(lambda: view.seconds_since_contact() < 1)
        assert view.connected


async def _stand_in(watch: Any, ping: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/v1/ping", ping)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("b_serves", [True, False], ids=["b-serves", "both-cut-off"])
async def test_a_watch_on_an_auth_behind_its_store_moves_to_one_that_serves(
    b_serves: bool,
) -> None:
    # Auth A is cut off from the shared store: it keeps the watch and pings every 0.2 s
    # saying how far behind it is, and refuses calls (503). Once B has served one of
    # the service's calls (its heartbeat), the watch moves to B and gets the lock made
    # through B. When B cannot serve either (the database itself is down), the watch
    # stays: no storm.
    watched: list[str] = []
    behind = {"a": 0}

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "connection_problem", "message": "auth cannot confirm locks (test)"},
            status=503,
        )

    async def watch_a(request: web.Request) -> web.StreamResponse:
        watched.append("a")
        answer = web.StreamResponse()
        await answer.prepare(request)
        snapshot = {"type": "snapshot", "revision": 1, "items": {"lock": []}}
        await answer.write(json.dumps(snapshot).encode() + b"\n")
        while True:
            await asyncio.sleep(0.2)
            await answer.write(json.dumps({"type": "ping", "behind": behind["a"]}).encode() + b"\n")

    async def watch_b(request: web.Request) -> web.StreamResponse:
        watched.append("b")
        answer = web.StreamResponse()
        await answer.prepare(request)
        items = {"lock": [lock("made-through-b")]}
        snapshot = {"type": "snapshot", "revision": 9, "items": items}
        await answer.write(json.dumps(snapshot).encode() + b"\n")
        while True:
            await asyncio.sleep(0.2)
            await answer.write(b'{"type": "ping"}\n')

    async def serve(request: web.Request) -> web.Response:
        return web.json_response({"served_by": "b"})

    runner_a, url_a = await _stand_in(watch_a, refuse)
    runner_b, url_b = await _stand_in(watch_b, serve if b_serves else refuse)
    client = AsyncAuthClient([url_a, url_b], ssl.create_default_context())
    view = ResourceView(client, ["lock"])
    view.start()
    try:
        await view.wait_ready(timeout=10)
        # Behind, but nothing served elsewhere yet: it stays.
        behind["a"] = 12
        await eventually_async(lambda: view.auth_behind == 12)
        # The heartbeat: A refuses it, B serves it (or refuses it too).
        if b_serves:
            assert await client.call("GET", "/v1/ping") == {"served_by": "b"}
            await eventually_async(lambda: view.get("lock", "made-through-b") is not None)
            assert watched == ["a", "b"]
            await asyncio.sleep(1)
            assert view.auth_behind == 0 and watched == ["a", "b"]  # and stays on B
        else:
            with pytest.raises(ConnectionProblem, match="cannot confirm locks"):
                await client.call("GET", "/v1/ping")
            await asyncio.sleep(1)  # five pings saying "behind"
            assert watched == ["a"]
            assert view.auth_behind == 12 and view.get("lock", "made-through-b") is None
    finally:
        await view.close()
        await client.close()
        await runner_a.cleanup()
        await runner_b.cleanup()
