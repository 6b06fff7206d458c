"""AsyncAuthClient's calls as a service makes them: what reaches auth, and how a call
fails when auth stops reading, or is not who it says it is.

The auth side is a real HTTPS or HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from certgate.errors import ConnectionProblem, NotFound
from certgate.rpc import auth_client
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.transport import client_context
from tests.support.net import free_port
from tests.support.tlsfiles import self_signed


async def _serve(
    app: web.Application, context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, port


async def test_query_values_reach_auth_as_httpx_wrote_them_and_errors_come_back_typed() -> None:
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        if request.query.get("missing"):
            refusal = {"error": "not_found", "message": "no such thing"}
            return web.json_response(refusal, status=404)
        return web.json_response({"body": await request.json() if request.can_read_body else None})

    app = web.Application()
    app.router.add_route("*", "/v1/echo", echo)
    runner, port = await _serve(app)
    client = AsyncAuthClient(f"http://127.0.0.1:{port}", client_context())
    try:
        answer = await client.call(
            "POST",
            "/v1/echo",
            json={"a": 1},
            params={"flag": True, "off": False, "none": None, "n": 3},
        )
        assert answer == {"body": {"a": 1}}
        assert seen[-1] == {"flag": "true", "off": "false", "none": "", "n": "3"}
        with pytest.raises(NotFound, match="no such thing"):
            await client.call("GET", "/v1/echo", params={"missing": "1"})
    finally:
        await client.close()
        await runner.cleanup()


async def test_an_upload_auth_stops_reading_fails_after_the_stall_not_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_client, "WRITE_STALL", 0.5)
    stuck, release = asyncio.Event(), asyncio.Event()

    async def never_reads(request: web.Request) -> web.Response:
        stuck.set()
        await release.wait()  # reads nothing: the client's writes stop when buffers fill
        return web.Response()

    app = web.Application(client_max_size=1 << 30)
    app.router.add_put("/v1/recordings/{id}", never_reads)
    runner, port = await _serve(app)
    client = AsyncAuthClient(f"http://127.0.0.1:{port}", client_context())

    async def endless() -> AsyncIterator[bytes]:
        chunk = b"x" * (1 << 20)
        while True:
            yield chunk

    try:
        started = time.monotonic()
        with pytest.raises(ConnectionProblem, match="did not answer in time"):
            await client.raw("PUT", "/v1/recordings/x", content=endless())
        assert stuck.is_set()
        assert time.monotonic() - started < 5, time.monotonic() - started
    finally:
        release.set()
        await client.close()
        await runner.cleanup()


async def test_an_auth_whose_certificate_the_cluster_did_not_sign_is_refused(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path, "impostor")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    hits: list[str] = []

    async def ping(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/ping", ping)
    runner, port = await _serve(app, server)
    other, _ = self_signed(tmp_path / "ca", "cluster-ca")
    client = AsyncAuthClient(f"https://127.0.0.1:{port}", client_context([other.read_text()]))
    try:
        with pytest.raises(ConnectionProblem, match="cannot verify the TLS certificate"):
            await client.call("GET", "/v1/ping")
        assert hits == []
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_watch_line_of_any_length_comes_whole() -> None:
    # aiohttp's own readline refuses lines over 128 KiB; a watch event carries a whole
    # resource, and a large role is one line.
    big = '{"role": "' + "r" * 300_000 + '"}'

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        text = ('{"a": 1}\r\n' + big + "\n" + '{"b": 2}').encode()
        for start in range(0, len(text), 7_000):  # in pieces, split anywhere
            await response.write(text[start : start + 7_000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/watch", watch)
    runner, port = await _serve(app)
    client = AsyncAuthClient(f"http://127.0.0.1:{port}", client_context())
    try:
        async with client.stream("GET", "/v1/watch") as lines:
            assert [line async for line in lines] == ['{"a": 1}', big, '{"b": 2}']
    finally:
        await client.close()
        await runner.cleanup()
