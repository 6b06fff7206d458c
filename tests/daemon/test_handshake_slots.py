"""A burst of TLS connections is served a few handshakes at a time (daemon/listeners.py):
all of them complete, never more than the slots run at once, and a client that stalls
holds a slot only until the handshake timeout, one that sends nothing holds none.

At 10,000 nodes connecting at once, auth ran every handshake together, none finished
before its client gave up, and auth answered nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from certgate.daemon import listeners
from certgate.daemon.config import HTTPLimits
from certgate.daemon.listeners import LimitedSite, bound_sockets, limited_runner
from tests.support.raw_http import insecure
from tests.support.tlsfiles import self_signed
from tests.support.wait import eventually_async

SLOTS = 3
HANDSHAKE_TIMEOUT = 2.0
BURST = 40


class Listener:
    def __init__(self, port: int) -> None:
        self.port = port
        self.running = 0  # handshakes in progress now
        self.most = 0  # the most ever in progress at once
        self.handshakes = 0


@pytest.fixture
async def listener(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Listener]:
    """A TLS listener with SLOTS handshake slots (or as many as the test's parameter),
    set as an operator sets them: `http_limits.handshakes_at_once`."""

    async def digest(request: web.Request) -> web.Response:
        return web.Response(text=hashlib.sha256(await request.read()).hexdigest())

    app = web.Application()
    app.router.add_post("/digest", digest)
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    limits = HTTPLimits(
        handshake_timeout=timedelta(seconds=HANDSHAKE_TIMEOUT),
        handshakes_at_once=getattr(request, "param", SLOTS),
    )
    runner = await limited_runner(app, limits)
    sockets = bound_sockets("127.0.0.1", 0)
    state = Listener(sockets[0].getsockname()[1])
    real_accept_tls = listeners.accept_tls

    async def counted(*args: Any) -> Any:
        state.running += 1
        state.handshakes += 1
        state.most = max(state.most, state.running)
        try:
            return await real_accept_tls(*args)
        finally:
            state.running -= 1

    monkeypatch.setattr(listeners, "accept_tls", counted)
    site = LimitedSite(runner, limits, sockets, ssl_context=context)
    await site.start()
    try:
        yield state
    finally:
        await runner.cleanup()


async def _post(port: int, body: bytes) -> str:
    """POST /digest on a fresh TLS connection and return the answer's body (on the
    test's event loop: a burst of these reaches the server all at once)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=insecure(), server_hostname="localhost"
    )
    head = f"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer.split(b"\r\n\r\n", 1)[1].decode()


def _hello_then_stall(port: int) -> socket.socket:
    """A TCP connection that sends a real ClientHello, then nothing more."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    outgoing = ssl.MemoryBIO()
    tls = insecure().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    raw.sendall(outgoing.read())
    return raw


def _until_closed(sock: socket.socket) -> None:
    sock.settimeout(HANDSHAKE_TIMEOUT * 3)
    try:
        while sock.recv(65536):  # the server's flight, then its close
            pass
    except ConnectionResetError:
        pass


async def _burst(listener: Listener) -> None:
    """BURST clients at once, each served whole."""
    bodies = [f"node {i}".encode() for i in range(BURST)]
    answers = await asyncio.gather(*(_post(listener.port, b) for b in bodies))
    assert answers == [hashlib.sha256(b).hexdigest() for b in bodies]
    assert listener.handshakes == BURST


async def test_a_burst_past_the_slots_is_all_served_a_few_at_a_time(listener: Listener) -> None:
    await _burst(listener)
    # Fails without the slots: the control below runs the same burst with a slot per
    # client and sees more than SLOTS at once.
    assert listener.most <= SLOTS, f"{listener.most} handshakes ran at once"
    # And the slots are shared, not one at a time (handshakes serialised would pass above).
    assert listener.most > 1, f"{listener.most} handshake ran at once"


@pytest.mark.parametrize("listener", [BURST], indirect=True)
async def test_with_a_slot_per_client_the_same_burst_runs_more_at_once(listener: Listener) -> None:
    # The control: the counter sees handshakes overlap, so the bound above can fail;
    # without slots (as before) a burst like this ran its handshakes all together.
    await _burst(listener)
    assert listener.most > SLOTS, listener.most


async def test_silent_clients_hold_no_slot_and_stalled_ones_only_until_the_timeout(
    listener: Listener,
) -> None:
    # More silent connections than slots: none has sent a byte, none takes a slot, and
    # a client behind them is served at once, well before the handshake timeout.
    silent = [
        await asyncio.to_thread(socket.create_connection, ("127.0.0.1", listener.port))
        for _ in range(SLOTS * 3)
    ]
    started = time.monotonic()
    assert await _post(listener.port, b"x") == hashlib.sha256(b"x").hexdigest()
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT / 2

    # Clients that send a ClientHello and stall do hold a slot (the counter sees them),
    # but the server ends them at the handshake timeout, and then serves others.
    stalled = [await asyncio.to_thread(_hello_then_stall, listener.port) for _ in range(SLOTS)]
    await eventually_async(lambda: listener.running == SLOTS, timeout=5)
    started = time.monotonic()
    for sock in stalled:
        await asyncio.to_thread(_until_closed, sock)
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT * 1.5
    assert listener.running == 0
    assert await _post(listener.port, b"y") == hashlib.sha256(b"y").hexdigest()
    for sock in [*silent, *stalled]:
        sock.close()
