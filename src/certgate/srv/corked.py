"""Transports that hand an asyncssh connection's writes on once per event-loop pass.

asyncssh writes every SSH packet to its transport as soon as it is made, and puts an
SSH_MSG_IGNORE packet in front of each one on an encrypted connection. On a socket that
is two send() calls per packet; on a connection that runs *inside* an SSH channel (the
proxy serving agentless nodes) it is two channel messages per packet, each wrapped again.
Measured on the agentless path, sends were the largest single cost; on the node,
corking took `ssh -J proxy node` from 205 to 238 MiB/s (bench/ssh_paths.py).

A corked transport keeps what is written during one pass of the event loop and passes
it on in one write at the end of the pass (`loop.call_soon`), so a packet and its
ignore packet, and all the packets made from one read, leave together. Order is kept;
nothing waits longer than the current pass; flow control passes straight through.

    CorkedTunnel(sock)       asyncssh.connect(tunnel=...) on a connected socket
    CorkedListener()         asyncssh.listen(tunnel=...) on host:port (node and proxy)
    ChannelTransport(conn)   an asyncssh connection served on an SSH channel (the
                             session of a direct-tcpip channel)
    cut_connection(conn, m)  end a connection at once with message m (a lock's cut)

All three use asyncssh's documented `tunnel` argument: an object whose
create_connection/create_server asyncssh calls with its connection factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh.constants import DEFAULT_LANG, MSG_DISCONNECT
from asyncssh.packet import String, UInt32

# `conn.get_extra_info(CORKED)`: the CorkedTransport under an asyncssh connection.
CORKED = "certgate_corked_transport"


_LINGER_RESET = struct.pack("ii", 1, 0)


def _end_now(transport_sock: Any, last: bytes) -> None:
    """`last` (the disconnect packet) and the FIN now, in one TCP segment; and a reset when
    the socket closes, which drops whatever the peer has not taken by then (a peer that
    reads nothing would otherwise hold the FIN back behind the output it does not read).

    `last` is sent with MSG_MORE, which holds it in the kernel, and the shutdown puts the
    FIN on that same segment: one packet through the network stack instead of two (on
    loopback the sender's call also runs the receiver's side of each). Only for a sink
    with nothing queued (else `last` would overtake it); a send cut short (a peer that
    reads nothing, its window full) loses the rest, as the reset would."""
    # Borrowed (detached below, never closed here); family, type and protocol given so
    # that making it asks the kernel nothing.
    sock = socket.socket(
        transport_sock.family, transport_sock.type, transport_sock.proto, transport_sock.fileno()
    )
    try:
        with contextlib.suppress(OSError):  # the peer may be gone already
            if last:
                sock.send(last, socket.MSG_MORE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()


class CorkedTransport(asyncio.Transport):
    """The transport an asyncssh connection writes to; `sink` is the real one (a socket
    transport or an SSH channel: both have write, write_eof, close, abort,
    get_extra_info, pause_reading and resume_reading)."""

    def __init__(self, sink: Any, *, on_socket: bool = False) -> None:
        super().__init__()
        self._sink = sink
        # The sink is a socket's transport (not an SSH channel): `cut` may act on it.
        self._on_socket = on_socket
        self._pending: list[bytes] = []
        self._scheduled = False
        self._closing = False
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if self._sink.is_closing():
            # Closed under us since the write (the peer went away): uvloop's transport
            # raises on a write now, where asyncio's only logs a warning.
            return
        try:
            self._sink.write(data)
        except (OSError, asyncssh.Error):
            pass  # the far side is gone; the close will be reported separately

    def write_eof(self) -> None:
        self.flush()
        if not self._sink.is_closing():
            self._sink.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self._closing:
            self.flush()
            self._closing = True
            self._sink.close()

    def abort(self) -> None:
        # What was written before (asyncssh's disconnect message) still goes first.
        self.flush()
        self._closing = True
        self._sink.abort()

    def cut(self) -> None:
        """End the connection now (a lock): what was written (the disconnect message)
        leaves at once with the FIN on the same segment, not a pass of the event loop
        later when the socket is closed; and the close resets the connection, so output
        the peer has not taken by then (a client that stopped reading) is dropped, not
        drained first. Nothing more is read or written; the transport's abort (which
        closes the socket, with that reset) is left to the connection's, which follows."""
        if self._sink.is_closing():  # the peer went first: nothing left to cut
            self._pending.clear()
            self._closing = True
            return
        sock = self._sink.get_extra_info("socket") if self._on_socket else None
        if sock is None or self._sink.get_write_buffer_size():
            # Behind output the sink still holds: the packet goes to the sink after it.
            self.flush()
            last = b""
        else:
            last = b"".join(self._pending)
            self._pending.clear()
        self._closing = True
        if sock is not None:
            _end_now(sock, last)
        self._sink.pause_reading()

    def is_closing(self) -> bool:
        return self._closing

    @property
    def on_socket(self) -> bool:
        """Whether the sink is a socket's transport (else an SSH channel)."""
        return self._on_socket

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == CORKED:
            return self
        return self._sink.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._sink.pause_reading()

    def resume_reading(self) -> None:
        if not self._closing:  # a cut connection reads nothing more until its abort
            self._sink.resume_reading()

    def get_write_buffer_size(self) -> int:
        return sum(len(chunk) for chunk in self._pending)


class _SocketSide(asyncio.Protocol):
    """The socket's protocol: passes everything to the asyncssh connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(CorkedTransport(transport, on_socket=True))

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        self.conn.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


class CorkedTunnel:
    """`asyncssh.connect(tunnel=CorkedTunnel(sock))`: a client on a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        conn = session_factory()
        transport, _ = await loop.create_connection(lambda: _SocketSide(conn), sock=self._sock)
        return transport, conn

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class _CorkedServer(asyncssh.SSHListener):
    def __init__(self, server: asyncio.Server) -> None:
        super().__init__()
        self._server = server

    def get_port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1]) if self._server.sockets else 0

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


class CorkedListener:
    """`asyncssh.listen(tunnel=CorkedListener(), host=..., port=...)`: a TCP listener."""

    async def create_server(
        self, session_factory: Callable[[str, int], Any], listen_host: str, listen_port: int
    ) -> asyncssh.SSHListener:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _SocketSide(session_factory("", 0)), listen_host or None, listen_port
        )
        return _CorkedServer(server)

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class ChannelTransport(asyncssh.SSHTCPSession[bytes]):
    """Serves asyncssh connection `conn` on the SSH channel this session is given."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def connection_made(self, chan: Any) -> None:
        self.conn.connection_made(CorkedTransport(chan))

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.conn.data_received(data)

    def eof_received(self) -> bool:
        self.conn.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


def cut_connection(conn: Any, message: str, code: int = asyncssh.DISC_BY_APPLICATION) -> None:
    """End asyncssh connection `conn` now with `message` (a lock's cut): the disconnect
    packet is written and, on a corked socket, leaves at once with the FIN right behind
    it (CorkedTransport.cut); then the connection is aborted.

    asyncssh's `disconnect()` first closes every channel one by one, a close packet
    each, built and encrypted, that a peer told to disconnect has no use for; then it
    sends the disconnect and aborts. Here only the disconnect is sent. Everything else
    happens as with `disconnect()`: every channel's session and the connection's owner
    get connection_lost a pass or two later (asyncssh's `abort`, called after this
    pass), so what a session does when it ends (its audit, its recording, a tunnel's
    linger) still runs. A connection on no corked socket (inside an SSH channel) is
    disconnected asyncssh's way."""
    transport = conn.get_extra_info(CORKED)
    if transport is None or not transport.on_socket:
        conn.disconnect(code, message)
        return
    if transport.is_closing():
        return
    conn.send_packet(MSG_DISCONNECT, UInt32(code), String(message), String(DEFAULT_LANG))
    transport.cut()
    # The abort (asyncssh's log line and clean-up, then the transport's, which closes
    # the socket) is not what the user waits for: it runs right after this pass, so in
    # a lock's pass over a thousand connections every FIN leaves before any of it. The
    # cut transport reads and writes nothing meanwhile.
    asyncio.get_running_loop().call_soon(conn.abort)
