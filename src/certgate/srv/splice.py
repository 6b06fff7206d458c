"""Two connections joined after a protocol switch (101), bytes relayed at the transport.

After kubectl's exec or port-forward is switched to WebSocket or SPDY, the proxy has
nothing left to read in the stream: it only moves bytes. Through asyncio streams every
piece is copied into a StreamReader's buffer, copied out again by read() and passed by
a task woken for it; here each transport hands what it decrypted straight to the other
one's write(), and back-pressure is the transports' own: a peer whose write buffer fills
pauses reading on this side until it drains.

    splice(a_reader, a_writer, b_reader, b_writer)   until either side closes or ends
    splice(..., a_tap=f, b_tap=g)    each piece read from a (b) goes through f (g) first,
                                     which sees it and says what to pass on now (the kube
                                     service reads exec frames in passing this way)

What the streams had already read (bytes that came with the 101) is written first. The
streams' own protocols are told when their connection is lost, so their writers'
wait_closed() and closed_waiter() still work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

log = logging.getLogger("certgate.srv.splice")

# Given each piece read from one side, the pieces to write to the other now (a tap may
# hold bytes back until it has more). An exception ends the splice: the stream broke
# the protocol the tap reads.
Tap = Callable[[bytes], Iterable[bytes | memoryview]]


class _Half(asyncio.Protocol):
    """Reads one transport into the other; pauses when the other cannot keep up."""

    def __init__(
        self, own: asyncio.Transport, done: asyncio.Future[None], tap: Tap | None = None
    ) -> None:
        self.own = own
        self.peer: asyncio.Transport | None = None
        self._done = done
        self._tap = tap
        self._streams = own.get_protocol()  # the StreamReaderProtocol being replaced

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        assert peer is not None
        if peer.is_closing():
            return
        if self._tap is None:
            peer.write(data)
            return
        try:
            pieces = self._tap(data)
        except Exception as exc:
            log.debug("splice ended: %r", exc)
            self.own.close()
            peer.close()
            self._finish()
            return
        for piece in pieces:
            peer.write(piece)

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
    *,
    a_tap: Tap | None = None,
    b_tap: Tap | None = None,
) -> None:
    """Relay both ways until either connection ends (the caller closes both); what a
    reads goes through `a_tap` on its way to b, what b reads through `b_tap`."""
    await a_writer.drain()  # nobody is paused: the new protocols start from a clean state
    await b_writer.drain()
    # Read-write transports; uvloop's are not subclasses of asyncio's: no isinstance.
    a = cast(asyncio.Transport, a_writer.transport)
    b = cast(asyncio.Transport, b_writer.transport)
    if a.is_closing() or b.is_closing():
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    a_half, b_half = _Half(a, done, a_tap), _Half(b, done, b_tap)
    a_half.peer, b_half.peer = b, a
    for half, reader in ((a_half, a_reader), (b_half, b_reader)):
        if data := _buffered(reader):
            half.data_received(data)
    a.set_protocol(a_half)
    b.set_protocol(b_half)
    # A StreamReader that was full paused its transport; both read freely now.
    a.resume_reading()
    b.resume_reading()
    if a_reader.at_eof() or b_reader.at_eof():
        return
    await done
