"""A client that opens connections and sends nothing, or sends headers a byte at a
time, holds them only until the timeouts; past max_connections it is turned away at
once, and the listener keeps serving everyone else."""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from certgate.api.json_input import BODY_TIMEOUT
from certgate.errors import AccessDenied
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from certgate.rpc.watcher import ResourceView
from tests.support.cluster import Cluster
from tests.support.raw_http import insecure, send
from tests.support.wait import tls_closed

MAX_CONNECTIONS = 30
TIMEOUT = 2.0  # idle and handshake
CONFIG = f"""\
version: v1
http_limits: {{max_connections: {MAX_CONNECTIONS}, idle_timeout: {TIMEOUT:g}s,
               handshake_timeout: {TIMEOUT:g}s}}
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("limits")
    config = workdir / "certgate.yaml"
    config.write_text(CONFIG)
    c = Cluster(workdir, extra_args=["--config", str(config)])
    c.start()
    yield c
    c.stop()


def connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def tls(addr: str) -> ssl.SSLSocket:
    return insecure().wrap_socket(connect(addr), server_hostname="localhost")


def seconds_until_closed(sock: socket.socket, limit: float) -> float | None:
    """How long until the server closes `sock`, or None if it is open after `limit`."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        data = sock.recv(1024)
    except (ConnectionResetError, ssl.SSLError):
        return time.monotonic() - start
    except TimeoutError:
        return None
    assert data == b"", data
    return time.monotonic() - start


@pytest.mark.parametrize("which", ["proxy", "auth"])
def test_idle_and_half_sent_connections_are_closed(limited: Cluster, which: str) -> None:
    addr = limited.proxy_addr if which == "proxy" else limited.auth_addr
    # A whole request on a fresh connection is answered: the server does not simply
    # close everything, so the closes below are the timeouts at work.
    assert send(addr, "GET", "/v1/ping")[0] == 200

    no_handshake = connect(addr)
    idle = tls(addr)
    half_sent = tls(addr)
    half_sent.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n")
    for sock in (no_handshake, idle, half_sent):
        closed = seconds_until_closed(sock, TIMEOUT + 4)
        assert closed is not None, "the connection was still open well after the timeout"
        sock.close()

    # Headers dribbled a byte at a time do not keep a connection alive either.
    slow = tls(addr)
    start = time.monotonic()
    try:
        for byte in b"GET /v1/ping HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            readable, _, _ = select.select([slow], [], [], 0.2)
            if readable and slow.recv(1) == b"":
                break
            slow.sendall(bytes([byte]))
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass
    assert time.monotonic() - start < TIMEOUT + 4
    slow.close()


def test_connections_past_the_cap_are_refused_at_once(limited: Cluster) -> None:
    addr = limited.proxy_addr
    held = [connect(addr) for _ in range(MAX_CONNECTIONS)]
    extra: list[socket.socket] = []
    try:
        assert seconds_until_closed(held[0], 0.3) is None  # the first ones are let in
        extra = [connect(addr) for _ in range(MAX_CONNECTIONS)]
        refused = [seconds_until_closed(sock, 1.0) for sock in extra]
        assert all(t is not None and t < 1.0 for t in refused), refused
        # The held ones are open (until the handshake timeout), so a new client waits
        # its turn: it is refused now ...
        with pytest.raises((ConnectionResetError, ssl.SSLError, OSError)):
            tls(addr).sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        for sock in held + extra:
            sock.close()
    # ... and served once they are gone.
    deadline = time.monotonic() + 10
    while send(addr, "GET", "/v1/ping")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_half_sent_body_is_refused_after_the_body_timeout(limited: Cluster) -> None:
    sock = tls(limited.proxy_addr)
    sock.sendall(
        b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"user": '
    )
    start = time.monotonic()
    sock.settimeout(BODY_TIMEOUT + 5)
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"did not arrive in time" in answer
    assert BODY_TIMEOUT - 1 < time.monotonic() - start < BODY_TIMEOUT + 5
    sock.close()


async def test_a_watch_socket_outlives_the_idle_timeout(
    limited: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # The watch that carries a node's heartbeats is one long request: auth's idle timer
    # (2 s here) is for connections between requests, and must not close it.
    admin = IdentityFiles.load(limited.data_dir / "admin")
    client = AsyncAuthClient(f"https://{limited.auth_addr}", admin.tls_context())
    view = ResourceView(client, ["lock"], carries_requests=True)
    view.start()
    try:
        await view.wait_ready(timeout=30)
        assert view.carries_requests
        await asyncio.sleep(3 * TIMEOUT)
        assert view.carries_requests
        # Auth answers on it (an admin is no node: refused, but answered).
        node = {
            "kind": "node",
            "version": "v1",
            "metadata": {"name": "admin"},
            "spec": {"addr": "127.0.0.1:1"},
        }
        with pytest.raises(AccessDenied, match="is not a node"):
            await view.ask({"type": "heartbeat", "node": node, "ttl_seconds": 30}, timeout=10)
        assert "watch of lock lost" not in caplog.text
    finally:
        await view.close()
        await client.close()
        await tls_closed()
