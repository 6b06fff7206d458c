"""Two connections joined after a protocol switch (101), bytes relayed at the transport.

After kubectl's exec or port-forward is switched to WebSocket or SPDY, the proxy has
nothing left to read in the stream: it only moves bytes. Through asyncio streams every
piece is copied into a StreamReader's buffer, copied out again by read() and passed by
a task woken for it; here each transport hands what it decrypted straight to the other
one's write(), and back-pressure is the transports' own: a peer whose write buffer fills
pauses reading on this side until it drains.

    splice(a_reader, a_writer, b_reader, b_writer)   until either side closes or ends

What the streams had already read (bytes that came with the 101) is written first. The
streams' own protocols are told when their connection is lost, so their writers'
wait_closed() and closed_waiter() still work.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast


class _Half(asyncio.Protocol):
    """Reads one transport into the other; pauses when the other cannot keep up."""

    def __init__(self, own: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.own = own
        self.peer: asyncio.Transport | None = None
        self._done = done
        self._streams = own.get_protocol()  # the StreamReaderProtocol being replaced

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if not self.peer.is_closing():
            self.peer.write(data)

    def eof_received(self) -> bool:
        self._finish()
        return False  # close this side: nothing more will come

    def pause_writing(self) -> None:  # our transport's buffer is full: stop the peer
        if self.peer is not None and not self.peer.is_closing():
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        self._streams.connection_lost(exc)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


def _buffered(reader: asyncio.StreamReader) -> bytes:
    """What `reader` holds already (read past the last message head)."""
    buffer: Any = getattr(reader, "_buffer", b"")  # CPython's StreamReader keeps it here
    data = bytes(buffer)
    if data:
        buffer.clear()
    return data


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Relay both ways until either connection ends (the caller closes both)."""
    await a_writer.drain()  # nobody is paused: the new protocols start from a clean state
    await b_writer.drain()
    # Cast, not isinstance(): uvloop's transports have the interface without the base class.
    a = cast(asyncio.Transport, a_writer.transport)
    b = cast(asyncio.Transport, b_writer.transport)
    if a.is_closing() or b.is_closing():
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    a_half, b_half = _Half(a, done), _Half(b, done)
    a_half.peer, b_half.peer = b, a
    for data, to in ((_buffered(a_reader), b), (_buffered(b_reader), a)):
        if data:
            to.write(data)
    a.set_protocol(a_half)
    b.set_protocol(b_half)
    # A StreamReader that was full paused its transport; both read freely now.
    a.resume_reading()
    b.resume_reading()
    if a_reader.at_eof() or b_reader.at_eof():
        return
    await done
