"""Two connections joined after a protocol switch (101), bytes relayed at the transport.

After kubectl's exec or port-forward is switched to WebSocket or SPDY, the proxy has
nothing left to read in the stream: it only moves bytes. Through asyncio streams every
piece is copied into a StreamReader's buffer, copied out again by read() and passed by
a task woken for it; here each transport hands what it decrypted straight to the other
one's write(), and back-pressure is the transports' own: a peer whose write buffer fills
pauses reading on this side until it drains.

    splice(a_reader, a_writer, b_reader, b_writer)   until either side closes or ends
    splice(..., a_tap=f, b_tap=g)    what is read from a (b) goes through f (g) first,
                                     which sees it, says what to pass on now and what it
                                     needs to see again with the next read (the kube
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

# Given what was read from one side (a view of a buffer that is reused once the tap
# returns), the pieces to write to the other now and how many bytes of it the tap is done
# with: the rest is handed to it again, followed by what is read next (a tap that reads
# messages passes on whole ones and waits for the end of the last). An exception ends
# the splice: the stream broke the protocol the tap reads.
Tap = Callable[[memoryview], tuple[Iterable[bytes | memoryview], int]]

# The read buffer of each side: uvloop's TLS transport decrypts at most 256 KiB per read
# (SSL_READ_MAX_SIZE), and a read is never offered less room than MIN_READ.
READ_BUFFER = 256 * 1024
MIN_READ = 64 * 1024


class _Half(asyncio.BufferedProtocol):
    """Reads one transport into the other; pauses when the other cannot keep up.

    A buffered protocol: the TLS transport decrypts straight into this buffer, where a
    plain protocol gets a new bytes object per TLS record and then their join (more
    allocations and a copy of every byte). What a tap is not done with stays where it
    is, and the next read lands right after it, so a message cut by a read is whole
    without being copied. The peer's write() encrypts what it is given at once on a TLS
    transport; a transport that cannot (a full plain socket, TLS waiting for a
    renegotiation) keeps a view of the buffer, and then the next read goes to a new
    buffer while the old one lives as long as that view."""

    def __init__(
        self, own: asyncio.Transport, done: asyncio.Future[None], tap: Tap | None = None
    ) -> None:
        self.own = own
        self.peer: asyncio.Transport | None = None
        self._done = done
        self._tap = tap
        self._streams = own.get_protocol()  # the StreamReaderProtocol being replaced
        self._buffer = bytearray(READ_BUFFER)
        self._start = self._end = 0  # _buffer[_start:_end]: read, and held by the tap

    def get_buffer(self, sizehint: int) -> memoryview:
        self._make_room(MIN_READ)
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self._pass_on()

    def preload(self, data: bytes) -> None:
        """What was read before the splice began, passed on first."""
        self._make_room(len(data))
        self._buffer[self._end : self._end + len(data)] = data
        self.buffer_updated(len(data))

    def _make_room(self, room: int) -> None:
        """At least `room` bytes free after what is held, in a buffer nobody else sees."""
        held = self._end - self._start
        shared = _exported(self._buffer)
        if not shared and len(self._buffer) - self._end >= room:
            return
        if not shared and len(self._buffer) - held >= room:
            view = memoryview(self._buffer)
            view[:held] = view[self._start : self._end]  # a memmove
        else:  # a new buffer, larger if a held message needs more
            size = max(READ_BUFFER, held + max(held, room))
            buffer = bytearray(size)
            buffer[:held] = memoryview(self._buffer)[self._start : self._end]
            self._buffer = buffer
        self._start, self._end = 0, held

    def _pass_on(self) -> None:
        # Never released by hand: a transport may still hold this view (see get_buffer).
        data = memoryview(self._buffer)[self._start : self._end]
        used = self._relay(data)
        if used >= len(data):
            self._start = self._end = 0
        else:
            self._start += used

    def _relay(self, data: memoryview) -> int:
        """Pass `data` (read from our transport) on to the peer, through the tap; how
        much of it is done with."""
        peer = self.peer
        assert peer is not None
        if peer.is_closing():
            return len(data)
        if self._tap is None:
            peer.write(data)
            return len(data)
        try:
            pieces, used = self._tap(data)
        except Exception as exc:
            log.debug("splice ended: %r", exc)
            self.own.close()
            peer.close()
            self._finish()
            return len(data)
        # One call for all of them: a TLS transport encrypts them all, then sends once.
        peer.writelines(pieces)
        return used

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


def _exported(buffer: bytearray) -> bool:
    """Whether a view of `buffer` is still held somewhere (a transport's write queue):
    a bytearray refuses to change size while one is."""
    try:
        buffer.append(0)
    except BufferError:
        return True
    del buffer[-1]
    return False


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
            half.preload(data)
    a.set_protocol(a_half)
    b.set_protocol(b_half)
    # A StreamReader that was full paused its transport; both read freely now.
    a.resume_reading()
    b.resume_reading()
    if a_reader.at_eof() or b_reader.at_eof():
        return
    await done
