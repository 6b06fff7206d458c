"""TLS on an accepted socket without a 256 KiB read buffer per connection.

asyncio's TLS layer (`asyncio.sslproto.SSLProtocol`, Python 3.11) gives every connection
its own `max_size` (256 KiB) buffer for the ciphertext it reads from the socket, zeroed
when the connection is made, so resident at once. Auth holds one long-lived connection
per node (its watch stream) and usually a keep-alive one for heartbeats: 10,000 nodes
cost about 5 GiB of those buffers alone, though an idle connection never fills them.

The buffer is only borrowed for one synchronous step: the selector transport asks the
protocol for it (`get_buffer`), `recv_into`s it and calls `buffer_updated`, which copies
the bytes into the connection's own `ssl.MemoryBIO` before returning. Nothing else runs
in between, so every connection served by one event loop can share one buffer.

    transport, protocol = await accept_tls(loop, factory, sock, context, handshake_timeout)

This leans on three attributes of asyncio's SSLProtocol (`_ssl_buffer`,
`_ssl_buffer_view`, and `max_size`, the length its __init__ allocates);
tests/daemon/test_tls_accept.py fails loudly if a Python upgrade changes them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from asyncio import sslproto
from collections.abc import Callable


class _Shared(threading.local):
    """One read buffer per thread (an event loop runs in one thread)."""

    def __init__(self) -> None:
        self.buffer = bytearray(sslproto.SSLProtocol.max_size)
        self.view = memoryview(self.buffer)


_shared = _Shared()


class SharedBufferTLS(sslproto.SSLProtocol):
    """asyncio's TLS protocol, reading through the thread's shared buffer."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        # asyncio's __init__ makes its buffer max_size long: for this instance, empty.
        # A 256 KiB buffer zeroed and freed per connection was 0.15-0.4 ms of CPU,
        # a sixth of a handshake's, thousands of times when nodes reconnect at once.
        self.__dict__["max_size"] = 0
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        del self.__dict__["max_size"]  # the class's again: reads take up to 256 KiB at a time
        # The shared buffer instead. get_buffer only grows a buffer shorter than
        # max_size: never this one.
        self._ssl_buffer = _shared.buffer
        self._ssl_buffer_view = _shared.view


async def accept_tls(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    conn: socket.socket,
    context: ssl.SSLContext,
    handshake_timeout: float,
) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """What `loop.connect_accepted_socket(factory, conn, ssl=context)` does, with the
    shared read buffer: returns once the handshake is done (or raises, conn closed)."""
    app = protocol_factory()
    handshake: asyncio.Future[None] = loop.create_future()

    def tls() -> SharedBufferTLS:
        return SharedBufferTLS(
            loop, app, context, handshake, server_side=True, ssl_handshake_timeout=handshake_timeout
        )

    raw, tls_protocol = await loop.connect_accepted_socket(tls, conn)
    try:
        await handshake
    except BaseException:
        raw.close()
        raise
    return tls_protocol._app_transport, app
