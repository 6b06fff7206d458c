"""Several auth addresses: a call goes on to the next when one cannot be reached, and
later calls stay with the one that answered; retry delays are fully jittered.

The auth side is a real HTTP server on loopback; the dead address is a port nothing
listens on (connection refused, as after `kill -9`).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from certgate.errors import ConnectionProblem, what_broke
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.failover import AuthAddresses, Backoff
from certgate.transport import client_context
from tests.support.net import free_port


async def _server(name: str, hits: list[str]) -> tuple[web.AppRunner, str]:
    async def ping(request: web.Request) -> web.Response:
        hits.append(name)
        return web.json_response({"served_by": name})

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(f'{{"served_by": "{name}"}}\n'.encode())
        return response

    async def socket(request: web.Request) -> web.WebSocketResponse:
        answer = web.WebSocketResponse()
        await answer.prepare(request)
        await answer.send_str(f'{{"served_by": "{name}"}}')
        await answer.close()
        return answer

    app = web.Application()
    app.router.add_get("/v1/ping", ping)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/v1/socket", socket)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def auth_b() -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []
    runner, url = await _server("b", hits)
    yield url, hits
    await runner.cleanup()


async def test_a_call_fails_over_to_the_next_address_and_stays_there(
    auth_b: tuple[str, list[str]],
) -> None:
    url_b, hits = auth_b
    dead = f"http://127.0.0.1:{free_port()}"
    client = AsyncAuthClient([dead, url_b], client_context(insecure=True))
    try:
        assert client.base_url == dead  # the first is tried first
        assert await client.call("GET", "/v1/ping") == {"served_by": "b"}
        assert client.base_url == url_b  # sticky: later calls start at the one that answered
        assert await client.call("GET", "/v1/ping") == {"served_by": "b"}
        assert hits == ["b", "b"]
        async with client.stream("GET", "/v1/watch") as lines:
            assert [line async for line in lines] == ['{"served_by": "b"}']
    finally:
        await client.close()


async def test_every_address_down_is_one_connection_problem() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    client = AsyncAuthClient(dead, client_context(insecure=True))
    try:
        with pytest.raises(ConnectionProblem) as caught:
            await client.call("GET", "/v1/ping")
        assert dead[0] in str(caught.value) and dead[1] in str(caught.value)
    finally:
        await client.close()


def test_addresses_move_past_a_failed_one_only_once() -> None:
    addresses = AuthAddresses(["a", "b", "c"])
    addresses.failed("a")
    assert addresses.current() == "b"
    addresses.failed("a")  # a late report about "a" does not skip the working "b"
    assert addresses.in_order() == ["b", "c", "a"]


def test_backoff_is_full_jitter_within_a_growing_capped_window() -> None:
    backoff = Backoff(base=0.5, cap=10, rng=random.Random(7))
    bounds = []
    for _ in range(8):
        bound = backoff.bound()
        delay = backoff.next()
        assert 0 <= delay <= bound
        bounds.append(bound)
    assert bounds == [0.5, 1, 2, 4, 8, 10, 10, 10]
    # Spread over the whole window (not bunched near its top), which is what keeps a
    # fleet that lost its auth together from returning together.
    first = [Backoff(0.5, 10, random.Random(i)).next() for i in range(1000)]
    assert min(first) < 0.05 and max(first) > 0.45
    backoff.reset()
    assert backoff.bound() == 0.5


async def test_an_auth_that_cannot_serve_is_passed_over_and_the_last_answer_is_kept(
    auth_b: tuple[str, list[str]],
) -> None:
    # An auth cut off from its store answers 503: with several addresses, calls and
    # watches go on to the next, and stay there. When every address answers 503, the
    # caller hears what the last one said, not "unreachable".
    cut_off_hits: list[str] = []

    async def cannot_serve(request: web.Request) -> web.Response:
        cut_off_hits.append(request.path)
        return web.json_response(
            {"error": "connection_problem", "message": "postgres store unreachable (test)"},
            status=503,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", cannot_serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    cut_off = f"http://127.0.0.1:{port}"
    url_b, hits = auth_b
    client = AsyncAuthClient([cut_off, url_b], client_context(insecure=True))
    both_cut_off = [cut_off, f"http://localhost:{port}"]  # two names, one server
    alone = AsyncAuthClient(both_cut_off, client_context(insecure=True))
    try:
        assert await client.call("GET", "/v1/ping") == {"served_by": "b"}
        assert client.base_url == url_b
        async with client.stream("GET", "/v1/watch") as lines:
            assert [line async for line in lines] == ['{"served_by": "b"}']
        assert cut_off_hits == ["/v1/ping"]  # sticky to b after the first 503
        assert hits == ["b"]
        # A watch, either form, from a service that starts at the cut-off auth.
        fresh = AsyncAuthClient([cut_off, url_b], client_context(insecure=True))
        try:
            async with fresh.stream("GET", "/v1/watch") as lines:
                assert [line async for line in lines] == ['{"served_by": "b"}']
            fresh._addresses.failed(url_b)  # the cut-off one first again
            async with fresh.websocket("/v1/socket", {}, 1024) as socket:
                assert (await socket.receive()).data == '{"served_by": "b"}'
        finally:
            await fresh.close()
        assert cut_off_hits == ["/v1/ping", "/v1/watch", "/v1/socket"]
        with pytest.raises(ConnectionProblem, match="postgres store unreachable"):
            await alone.call("GET", "/v1/ping")
    finally:
        await client.close()
        await alone.close()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (httpx.ReadError(""), "the connection broke off (ReadError)"),
        (httpx.RemoteProtocolError(""), "the connection broke off (RemoteProtocolError)"),
        (TimeoutError(), "no answer in time"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "[Errno 111] Connection refused"),
    ],
)
def test_an_error_with_no_words_of_its_own_is_still_said(exc: Exception, said: str) -> None:
    # Seen in a node's log: "node heartbeat failed: cannot reach https://...: " (nothing).
    assert what_broke(exc) == said
