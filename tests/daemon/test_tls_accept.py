"""Idle TLS connections cost a listener little: asyncio's 256 KiB read buffer per
connection is shared (daemon/tls_accept.py), and sharing it mixes no one's bytes.

A client that opens many TLS connections and leaves them idle (or 10,000 nodes doing so
for their watch and heartbeats) used to pin 256 KiB of auth's memory each.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import tracemalloc
from asyncio import sslproto
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from certgate.daemon.config import HTTPLimits
from certgate.daemon.listeners import LimitedSite, bound_sockets, limited_runner
from tests.support.raw_http import insecure
from tests.support.tlsfiles import self_signed

IDLE_CONNECTIONS = 50


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[tuple[int, LimitedSite]]:
    async def digest(request: web.Request) -> web.Response:
        return web.Response(text=hashlib.sha256(await request.read()).hexdigest())

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/digest", digest)
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = await limited_runner(app, HTTPLimits())
    sockets = bound_sockets("127.0.0.1", 0)
    site = LimitedSite(runner, HTTPLimits(), sockets, ssl_context=context)
    await site.start()
    try:
        yield sockets[0].getsockname()[1], site
    finally:
        await runner.cleanup()


def _post(port: int, body: bytes) -> tuple[ssl.SSLSocket, str]:
    """POST /digest on a fresh TLS connection (blocking: no asyncio buffers of its own),
    and leave the connection open."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = insecure().wrap_socket(raw, server_hostname="localhost")
    head = f"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    conn.sendall(head.encode() + body)
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 64:
        chunk = conn.recv(65536)
        assert chunk, answer
        answer += chunk
    return conn, answer.split(b"\r\n\r\n", 1)[1].decode()


async def test_idle_tls_connections_do_not_each_hold_a_read_buffer(
    listener: tuple[int, LimitedSite],
) -> None:
    port, site = listener
    warm, _ = await asyncio.to_thread(_post, port, b"warm-up")  # makes the shared buffer
    warm.close()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        conns = await asyncio.gather(
            *(asyncio.to_thread(_post, port, b"hello") for _ in range(IDLE_CONNECTIONS))
        )
        assert site.gate.open >= IDLE_CONNECTIONS  # all still open on the server side
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        for conn, _ in conns:
            conn.close()
    per_connection = held / IDLE_CONNECTIONS
    # asyncio alone: 256 KiB each. What is left is aiohttp's and asyncio's bookkeeping.
    assert per_connection < sslproto.SSLProtocol.max_size / 4, per_connection


async def test_connections_reading_at_once_get_their_own_bytes(
    listener: tuple[int, LimitedSite],
) -> None:
    port, _ = listener
    bodies = [bytes([i]) * (3 * 1024 * 1024 + i) for i in range(6)]  # each > the buffer
    answers = await asyncio.gather(*(asyncio.to_thread(_post, port, b) for b in bodies))
    for body, (conn, digest) in zip(bodies, answers, strict=True):
        conn.close()
        assert digest == hashlib.sha256(body).hexdigest()


def test_asyncio_still_reads_tls_through_the_attributes_we_share() -> None:
    # tls_accept.py swaps two private attributes of asyncio's SSLProtocol; a Python
    # whose SSLProtocol no longer reads through them must fail here, not leak quietly.
    loop = asyncio.new_event_loop()
    try:
        from certgate.daemon.tls_accept import SharedBufferTLS

        one = SharedBufferTLS(loop, asyncio.Protocol(), insecure(), None)
        two = SharedBufferTLS(loop, asyncio.Protocol(), insecure(), None)
        try:
            assert one.get_buffer(-1).obj is two.get_buffer(-1).obj
            assert len(one.get_buffer(-1)) == sslproto.SSLProtocol.max_size
            assert one.max_size == sslproto.SSLProtocol.max_size  # reads as asyncio's
            # Nor is a buffer of its own made and thrown away per connection (it was
            # zeroed, 0.15-0.4 ms of CPU each): asyncio's __init__ sizes it by max_size.
            tracemalloc.start()
            try:
                three = SharedBufferTLS(loop, asyncio.Protocol(), insecure(), None)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < sslproto.SSLProtocol.max_size / 4, peak
            three._app_transport.abort()
        finally:
            for protocol in (one, two):  # never connected: nothing to shut down
                protocol._app_transport.abort()
    finally:
        loop.close()
