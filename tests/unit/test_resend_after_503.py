"""A call an auth answers 503 goes on to the next auth only if nothing of it can have
been written (backend/write_marks.py): a read, or a call auth says wrote nothing.

Before, every 503'd call was sent on. A write whose answer was lost may have been
committed, and the next auth then found the call done and did the rest differently (a
demotion already made cuts nothing) or did it again (a second join token).

Real pieces: auth's request handling (AuthAPI's handler wrapper) on its real SQLite
store, served over HTTP on loopback, and the client services use; a second server
stands in for the next auth and counts what reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from certgate.auth.http import AuthAPI
from certgate.backend.base import Item
from certgate.errors import NOT_APPLIED_HEADER, ConnectionProblem, NotFound
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.transport import client_context
from tests.support.auth_server import started_auth_server
from tests.support.net import free_port


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def cut_off_auth(tmp_path: Path) -> AsyncIterator[str]:
    """An auth whose store fails part way through a call: after a write, or on a read."""
    async with started_auth_server(tmp_path) as server:
        api = AuthAPI(server)

        async def write_then_fail(request: web.Request, caller: Any) -> None:
            await server.backend.put(Item(key="/tokens/t1", value=b"{}"))
            raise ConnectionProblem("postgres store unreachable: the connection dropped")

        async def fail_on_read(request: web.Request, caller: Any) -> None:
            try:
                await server.backend.get("/users/nobody")
            except NotFound:
                pass
            raise ConnectionProblem("postgres store unreachable: the connection dropped")

        app = web.Application()
        app.router.add_post("/v1/wrote", api._handler(None, "", write_then_fail))
        app.router.add_post("/v1/read", api._handler(None, "", fail_on_read))
        app.router.add_get("/v1/read", api._handler(None, "", fail_on_read))
        runner, url = await _serve(app)
        yield url
        await runner.cleanup()


@pytest.fixture
async def next_auth() -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hits.append(f"{request.method} {request.path}")
        return web.json_response({"served_by": "next"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner, url = await _serve(app)
    yield url, hits
    await runner.cleanup()


async def test_a_write_that_may_have_happened_is_not_sent_to_the_next_auth(
    cut_off_auth: str, next_auth: tuple[str, list[str]]
) -> None:
    url, hits = next_auth
    client = AsyncAuthClient([cut_off_auth, url], client_context(insecure=True))
    try:
        with pytest.raises(ConnectionProblem, match="connection dropped"):
            await client.call("POST", "/v1/wrote")
        assert hits == []
        assert client.base_url == url  # the next call goes to the next auth
        answer = await client.raw("POST", "/v1/wrote")
        assert answer.status_code == 200 and hits == ["POST /v1/wrote"]
    finally:
        await client.close()


async def test_a_call_that_wrote_nothing_goes_on_to_the_next_auth(
    cut_off_auth: str, next_auth: tuple[str, list[str]]
) -> None:
    url, hits = next_auth
    client = AsyncAuthClient([cut_off_auth, url], client_context(insecure=True))
    try:
        assert await client.call("POST", "/v1/read") == {"served_by": "next"}
        client._addresses.failed(url)  # the cut-off auth first again
        assert await client.call("GET", "/v1/read") == {"served_by": "next"}
        assert hits == ["POST /v1/read", "GET /v1/read"]
    finally:
        await client.close()


async def test_auth_says_which_503s_wrote_nothing(cut_off_auth: str) -> None:
    client = AsyncAuthClient([cut_off_auth], client_context(insecure=True))
    try:
        wrote = await client.raw("POST", "/v1/wrote")
        read = await client.raw("POST", "/v1/read")
    finally:
        await client.close()
    assert wrote.status_code == read.status_code == 503
    assert NOT_APPLIED_HEADER not in wrote.headers
    assert read.headers[NOT_APPLIED_HEADER] == "1"
