"""cut_connection(): a lock's cut of an SSH connection on a corked socket, seen by a real
asyncssh client: the message arrives as the disconnect's reason, the FIN follows at once
(even to a client that reads nothing), and every channel's session and the connection's
owner on the server still hear that the connection is gone (their bookkeeping runs)."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import pytest

from certgate.daemon.event_loop import ASYNCIO, UVLOOP, loop_factory
from certgate.srv.certcapture import skip_ignore_packets
from certgate.srv.corked import CORKED, CorkedListener, CorkedTransport, cut_connection
from tests.support.wait import eventually_async

MESSAGE = "access denied: locked: corked drill"


class _Tunnel(asyncssh.SSHTCPSession[bytes]):
    """A direct-tcpip channel's session (the proxy's NodeTunnel); notes its end."""

    def __init__(self, ends: list[Exception | None]) -> None:
        self._ends = ends

    def connection_lost(self, exc: Exception | None) -> None:
        self._ends.append(exc)


@dataclass
class _Served:
    conns: list[Any] = field(default_factory=list)
    tunnel_ends: list[Exception | None] = field(default_factory=list)
    owner_lost: list[Exception | None] = field(default_factory=list)
    tunnels: int = 0


class _Server(asyncssh.SSHServer):
    def __init__(self, served: _Served) -> None:
        self._served = served

    def connection_made(self, conn: Any) -> None:
        skip_ignore_packets(conn)
        self._served.conns.append(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._served.owner_lost.append(exc)

    def begin_auth(self, username: str) -> bool:
        return False

    def connection_requested(self, *args: Any) -> Any:
        self._served.tunnels += 1
        return _Tunnel(self._served.tunnel_ends)


class _Reasons(logging.Handler):
    """The disconnect reasons asyncssh clients logged. asyncssh gives a client's owner no
    reason for a disconnect "by application" (connection_lost gets None) but logs it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "Received disconnect" in text:
            self.texts.append(text)


@pytest.fixture
def reasons() -> Iterator[_Reasons]:
    handler = _Reasons()
    logger = logging.getLogger("asyncssh")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    asyncssh.set_debug_level(1)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def _serve(corked: bool = True) -> tuple[asyncssh.SSHAcceptor, _Served]:
    served = _Served()
    key = asyncssh.generate_private_key("ssh-ed25519")
    listener = await asyncssh.listen(
        tunnel=CorkedListener() if corked else None, host="127.0.0.1", port=0,
        server_host_keys=[key], server_factory=lambda: _Server(served),
    )  # fmt: skip
    return listener, served


async def _connect(port: int, **kwargs: Any) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", port, known_hosts=None, username="u", client_keys=None, **kwargs
    )


async def test_the_client_gets_the_message_and_the_server_side_hears_the_end(
    reasons: _Reasons,
) -> None:
    listener, served = await _serve()
    clients = [await _connect(listener.get_port()) for _ in range(3)]
    for client in clients:
        await client.create_connection(asyncssh.SSHTCPSession, "node-1", 22)
        await client.create_connection(asyncssh.SSHTCPSession, "node-2", 22)
    await eventually_async(lambda: served.tunnels == 6)
    try:
        for conn in served.conns:
            assert conn.get_extra_info(CORKED) is not None
            cut_connection(conn, MESSAGE)
        for client in clients:
            await asyncio.wait_for(client.wait_closed(), 5)
        # Each client got the lock's words as the disconnect's reason.
        assert len(reasons.texts) == 3
        assert all(MESSAGE in text for text in reasons.texts)
        # The server's side ran its course: every channel's session and every owner
        # heard the connection end (a proxy's tunnel lingers, a node audits from there).
        for conn in served.conns:
            await asyncio.wait_for(conn.wait_closed(), 5)
        await eventually_async(lambda: len(served.tunnel_ends) == 6)
        # As after asyncssh's own disconnect: an end, not an error (the abort comes
        # after the cut's pass, and nothing in between may make it a lost connection).
        assert served.owner_lost == [None, None, None]
        # A second cut of a cut connection is harmless (a second lock in the same pass).
        cut_connection(served.conns[0], MESSAGE)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_client_that_reads_nothing_gets_the_fin_at_once(reasons: _Reasons) -> None:
    listener, served = await _serve()
    client = await _connect(listener.get_port())
    raw = client.get_extra_info("socket")
    await client.create_connection(asyncssh.SSHTCPSession, "node-1", 22)
    await eventually_async(lambda: served.tunnels == 1)
    poll = select.poll()
    poll.register(raw.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    # The client takes nothing more from its socket (a stalled terminal).
    client._transport.pause_reading()  # type: ignore[attr-defined]
    try:
        assert not poll.poll(0)  # shown first: the poll would see an end, and sees none yet
        cut_connection(served.conns[0], MESSAGE)
        # The event loop does not run during this blocking poll: the FIN left within the
        # cut's own call, not a pass later (the reset follows with the abort).
        assert poll.poll(2000)
        # The disconnect packet is there, unread, ahead of the end.
        with socket.fromfd(raw.fileno(), socket.AF_INET, socket.SOCK_STREAM) as peek:
            assert peek.recv(4096, socket.MSG_PEEK)
    finally:
        client.abort()
        listener.close()
        await listener.wait_closed()


async def test_a_connection_on_no_corked_socket_is_disconnected_the_usual_way(
    reasons: _Reasons,
) -> None:
    # A connection with no corked socket of its own to end (one served inside an SSH
    # channel, the proxy's agentless hop, has none either) gets asyncssh's disconnect,
    # with the same message.
    listener, served = await _serve(corked=False)
    client = await _connect(listener.get_port())
    try:
        conn = served.conns[0]
        assert conn.get_extra_info(CORKED) is None
        cut_connection(conn, MESSAGE)
        await asyncio.wait_for(client.wait_closed(), 5)
        assert any(MESSAGE in text for text in reasons.texts)
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize("loop_name", [ASYNCIO, UVLOOP])
def test_output_or_a_cut_for_a_socket_already_closed_is_quiet(loop_name: str) -> None:
    # The socket's transport may be closed (the peer reset the connection) before the
    # asyncssh connection on it hears so and stops writing. uvloop's transport raised on
    # those writes: an ERROR with a traceback in the log for an ordinary hang-up.
    async def write_then_lose_the_socket() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        ours, theirs = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        corked = CorkedTransport(transport, on_socket=True)
        transport.abort()  # the connection is lost (a reset, say)...
        for _ in range(3):
            await asyncio.sleep(0)
        corked.write(b"late output")  # ...and its owner, not told yet, writes
        corked.write_eof()
        corked.cut()  # or a lock cuts it (asyncio's closed socket has fd -1: ValueError)
        for _ in range(3):
            await asyncio.sleep(0)
        theirs.close()
        return errors

    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        assert runner.run(write_then_lose_the_socket()) == []
