"""The proxy's pass-through of the auth API (`/v1/api/<path>`), in process: a real
ProxyWeb on TLS with a user's client certificate, in front of a stand-in for auth.

Covers what the integration tests cannot measure from outside: a long answer (a
recording played back) is streamed through whole, in bounded memory, and an answer that
breaks off at auth reaches the user as a broken one, never as a short complete one."""

from __future__ import annotations

import hashlib
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web

from certgate.api.certs import generate_private_key, private_key_to_pem
from certgate.api.identity import Identity
from certgate.auth.ca import CASigner, generate_authority
from certgate.proxy.web import FORWARDED_ADDR, FORWARDED_CERT, ProxyWeb
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.transport import client_context, server_context

CLUSTER = "web-test.example"
CHUNK = 64 * 1024
RECORDING_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def body_chunk(n: int) -> bytes:
    """Chunk n of the long answer: distinct per chunk, so reordering or loss shows."""
    return hashlib.sha256(str(n).encode()).digest() * (CHUNK // 32)


def body_digest(chunks: int) -> str:
    digest = hashlib.sha256()
    for n in range(chunks):
        digest.update(body_chunk(n))
    return digest.hexdigest()


class FakeAuth:
    """Answers as auth does: a cast file streamed with its length, and an echo."""

    def __init__(self) -> None:
        self.seen_headers: dict[str, str] = {}
        self.cast_chunks = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/recordings/{id}/cast", self.cast)
        app.router.add_get("/v1/broken", self.broken)
        app.router.add_get("/v1/echo", self.echo)
        app.router.add_post("/v1/echo", self.echo)
        app.router.add_delete("/v1/empty", self.empty)
        return app

    async def cast(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-asciicast; charset=utf-8"}
        )
        response.content_length = self.cast_chunks * CHUNK
        await response.prepare(request)
        for n in range(self.cast_chunks):
            await response.write(body_chunk(n))
        await response.write_eof()
        return response

    async def broken(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 4 * CHUNK
        await response.prepare(request)
        await response.write(body_chunk(0))
        assert request.transport is not None
        request.transport.close()  # auth dies mid-answer
        return response

    async def echo(self, request: web.Request) -> web.Response:
        self.seen_headers = dict(request.headers)
        body = await request.read()
        return web.json_response(
            {"method": request.method, "query": dict(request.query), "body": body.decode()}
        )

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(status=204)


@dataclass
class Setup:
    auth: FakeAuth
    auth_runner: web.AppRunner
    proxy_url: str
    user_context: ssl.SSLContext
    anonymous_context: ssl.SSLContext

    def client(self, *, anonymous: bool = False) -> httpx.AsyncClient:
        context = self.anonymous_context if anonymous else self.user_context
        return httpx.AsyncClient(base_url=self.proxy_url, verify=context, timeout=30)


async def _serve(app: web.Application, context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    now = datetime.now(UTC)
    later = now + timedelta(hours=1)
    host_ca = generate_authority("host_tls", CLUSTER, now)
    user_ca = generate_authority("user_tls", CLUSTER, now)
    host_ca_pem = host_ca.spec.active_keys[0].public
    user_ca_pem = user_ca.spec.active_keys[0].public

    proxy_key = generate_private_key()
    proxy_cert = CASigner(host_ca).sign_tls(
        proxy_key.public_key(),
        Identity(username="proxy", kind="service"),
        now,
        later,
        ip_addresses=["127.0.0.1"],
        server=True,
    )
    user_key = generate_private_key()
    user_cert = CASigner(user_ca).sign_tls(
        user_key.public_key(), Identity(username="alice", roles=("access",)), now, later
    )

    auth = FakeAuth()
    auth_runner, auth_port = await _serve(auth.app(), None)
    auth_client = AsyncAuthClient(f"http://127.0.0.1:{auth_port}", ssl.create_default_context())
    proxy = ProxyWeb(auth_client, CLUSTER, "127.0.0.1:3023")
    proxy_context = server_context(
        proxy_cert, private_key_to_pem(proxy_key).decode(), client_cas=[user_ca_pem]
    )
    proxy_runner, proxy_port = await _serve(proxy.app(), proxy_context)
    try:
        yield Setup(
            auth=auth,
            auth_runner=auth_runner,
            proxy_url=f"https://127.0.0.1:{proxy_port}",
            user_context=client_context(
                [host_ca_pem], user_cert, private_key_to_pem(user_key).decode()
            ),
            anonymous_context=client_context([host_ca_pem]),
        )
    finally:
        await proxy_runner.cleanup()
        await auth_client.close()
        await auth_runner.cleanup()


async def _fetch_digest(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, str, int]:
    digest = hashlib.sha256()
    received = 0
    async with client.stream("GET", path) as response:
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            received += len(chunk)
    return response, digest.hexdigest(), received


async def test_a_recording_passes_through_whole(setup: Setup) -> None:
    setup.auth.cast_chunks = 64  # 4 MiB
    async with setup.client() as client:
        path = f"/v1/api/recordings/{RECORDING_ID}/cast"
        response, digest, received = await _fetch_digest(client, path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-asciicast; charset=utf-8"
    assert response.headers["content-length"] == str(64 * CHUNK)
    assert received == 64 * CHUNK
    assert digest == body_digest(64)


async def test_the_proxy_does_not_hold_a_long_answer_in_memory(setup: Setup) -> None:
    chunks = 256  # 16 MiB through the proxy; it may hold a few chunks, not the answer
    setup.auth.cast_chunks = chunks
    async with setup.client() as client:
        path = f"/v1/api/recordings/{RECORDING_ID}/cast"
        await _fetch_digest(client, "/v1/api/echo")  # the connections are set up
        tracemalloc.start()
        try:
            response, digest, received = await _fetch_digest(client, path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 200
    assert received == chunks * CHUNK
    assert digest == body_digest(chunks)
    # Auth, proxy and user all run in this process: the peak counts every copy of a
    # chunk on the way, and stays a small fraction of the 16 MiB answer.
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while passing {received} bytes"


async def test_an_answer_broken_off_at_auth_is_broken_for_the_user(setup: Setup) -> None:
    async with setup.client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await _fetch_digest(client, "/v1/api/broken")
        # The proxy still serves the next call.
        answer = await client.get("/v1/api/echo")
    assert answer.status_code == 200


async def test_the_user_certificate_is_passed_on_and_identity_headers_are_replaced(
    setup: Setup,
) -> None:
    async with setup.client() as client:
        answer = await client.post(
            "/v1/api/echo?user=bob",
            content=b'{"x": 1}',
            headers={
                "Content-Type": "application/json",
                FORWARDED_CERT: "forged",
                FORWARDED_ADDR: "10.0.0.1",
                "X-Other": "dropped",
            },
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    echoed: dict[str, Any] = answer.json()
    assert echoed == {"method": "POST", "query": {"user": "bob"}, "body": '{"x": 1}'}
    seen = setup.auth.seen_headers
    assert seen[FORWARDED_CERT] not in ("", "forged")
    assert seen[FORWARDED_ADDR] == "127.0.0.1"
    assert "X-Other" not in seen


async def test_an_empty_answer_stays_empty(setup: Setup) -> None:
    async with setup.client() as client:
        answer = await client.delete("/v1/api/empty")
    assert answer.status_code == 204
    assert answer.content == b""


async def test_the_api_needs_a_client_certificate(setup: Setup) -> None:
    async with setup.client(anonymous=True) as client:
        answer = await client.get("/v1/api/echo")
    assert answer.status_code == 401
    assert answer.json()["message"] == "access denied: log in first (cgsh login)"


async def test_auth_unreachable_is_an_error_answer(setup: Setup) -> None:
    await setup.auth_runner.cleanup()
    async with setup.client() as client:
        answer = await client.get("/v1/api/echo")
    assert answer.status_code == 503
    assert answer.json()["error"] == "connection_problem"
