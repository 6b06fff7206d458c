"""What one client may hold of an Http1Server (kubectl's port 3026, the kube service's
3027), from the attacker's side: a connection that never finishes its TLS handshake, one
that sends nothing after it, a head sent a byte at a time, and more connections than the
cap. Each is closed; honest requests still get their answers."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certgate.srv.http1 import Head
from certgate.srv.http1_server import ClientConnection, Http1Limits, Http1Server
from tests.support.tlsfiles import self_signed

log = logging.getLogger("test.http1")


async def _answer(head: Head, client: ClientConnection, context: bool) -> bool:
    client.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await client.writer.drain()
    return True


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Http1Server[bool], int]]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    limits = Http1Limits(max_connections=2, idle_timeout=0.6, handshake_timeout=0.6)
    http1: Http1Server[bool] = Http1Server(lambda client: True, _answer, log, limits)
    port = await http1.start("127.0.0.1", 0, context)
    yield http1, port
    await http1.close()


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (read gives EOF or a reset)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        try:
            while await reader.read(1024):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
    return time.monotonic() - started


async def _ask(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls())
    writer.write(b"GET /api HTTP/1.1\r\nhost: x\r\n\r\n")
    answer = await reader.readexactly(len(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
    writer.close()
    return answer


async def test_no_handshake_and_no_request_are_both_closed(
    server: tuple[Http1Server[bool], int],
) -> None:
    _, port = server
    # TCP only: the TLS handshake never starts.
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", port)
    # TLS done, then nothing.
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls())
    assert await _closed_within(raw_reader, 5) < 3
    assert await _closed_within(idle_reader, 5) < 3
    raw_writer.close()
    idle_writer.close()
    assert (await _ask(port)).endswith(b"ok")


async def test_a_head_sent_a_byte_at_a_time_is_closed(
    server: tuple[Http1Server[bool], int],
) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls())

    async def trickle() -> None:
        for byte in b"GET /api HTTP/1.1\r\nhost: " + b"x" * 100:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    sending = asyncio.create_task(trickle())
    try:
        # Ten bytes a second never finish the head: cut at the idle timeout, not at the
        # end of the trickle (12 s).
        assert await _closed_within(reader, 5) < 3
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()


async def test_past_the_cap_a_connection_is_closed_at_once(
    server: tuple[Http1Server[bool], int],
) -> None:
    http1, port = server
    held = [await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls()) for _ in range(2)]
    await asyncio.sleep(0.1)  # both past their handshake, waiting for a request
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls())
    assert await _closed_within(reader, 5) < 0.5
    assert http1.refused == 1
    writer.close()
    for _, held_writer in held:
        held_writer.close()
