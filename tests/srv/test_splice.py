"""splice(): two TCP connections joined at the transports, as the kube listener joins
kubectl's and the kube service's after a protocol switch."""

from __future__ import annotations

import asyncio
from typing import cast

from certgate.srv.splice import READ_BUFFER, _Half, splice

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connected() -> tuple[Pair, Pair, asyncio.Server]:
    """(the far end as a client sees it, the near end the relay holds), over loopback."""
    accepted: asyncio.Future[Pair] = asyncio.get_running_loop().create_future()

    async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    far = await asyncio.open_connection("127.0.0.1", port)
    return far, await accepted, server


async def test_bytes_flow_both_ways_with_what_was_buffered_first() -> None:
    (user, user_w), (near_a, near_a_w), server_a = await _connected()
    (api, api_w), (near_b, near_b_w), server_b = await _connected()
    # Bytes that came with the 101, already read into the streams' buffers.
    user_w.write(b"early-from-user|")
    api_w.write(b"early-from-api|")
    await user_w.drain()
    await api_w.drain()
    assert await near_a.readexactly(1) == b"e"
    assert await near_b.readexactly(1) == b"e"
    relay = asyncio.ensure_future(splice(near_a, near_a_w, near_b, near_b_w))

    big = bytes(range(256)) * 16384  # 4 MiB: more than any buffer on the way
    api_w.write(big)
    got = await asyncio.wait_for(user.readexactly(len(b"arly-from-api|") + len(big)), 30)
    assert got == b"arly-from-api|" + big
    user_w.write(b"typed")
    assert await asyncio.wait_for(api.readexactly(len(b"arly-from-user|typed")), 10) == (
        b"arly-from-user|typed"
    )
    assert not relay.done()

    # One side leaving ends the splice; the relay's own writers see their connections
    # closed (wait_closed() returns), as the stream servers expect.
    api_w.close()
    await asyncio.wait_for(relay, 10)
    near_a_w.close()
    near_b_w.close()
    await asyncio.wait_for(near_a_w.wait_closed(), 5)
    await asyncio.wait_for(near_b_w.wait_closed(), 5)
    assert await asyncio.wait_for(user.read(), 5) == b""
    user_w.close()
    for server in (server_a, server_b):
        server.close()
        await server.wait_closed()


class _KeepingTransport:
    """A peer transport that cannot send yet (a full socket): it keeps what it is
    given, as views, the way a transport queues a write it cannot make at once."""

    def __init__(self) -> None:
        self.kept: list[memoryview] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: memoryview) -> None:
        self.kept.append(memoryview(data))

    def writelines(self, pieces: list[memoryview]) -> None:
        for piece in pieces:
            self.write(piece)

    def get_protocol(self) -> None:
        return None


def _read(half: _Half, data: bytes) -> None:
    """One read of `data` by the transport that `half` is the protocol of."""
    buffer = half.get_buffer(-1)
    buffer[: len(data)] = data
    half.buffer_updated(len(data))


async def test_a_write_still_queued_is_never_overwritten_by_the_next_read() -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    peer = _KeepingTransport()
    half = _Half(cast(asyncio.Transport, _KeepingTransport()), done)
    half.peer = cast(asyncio.Transport, peer)
    pieces = [bytes([n]) * 1000 for n in range(1, 20)]
    for piece in pieces:
        _read(half, piece)
    assert [bytes(view) for view in peer.kept] == pieces


async def test_what_a_tap_holds_back_comes_again_with_the_next_read() -> None:
    """A tap that passes on whole lines only: a line cut by reads reaches it whole,
    however the reads cut it and however long it is."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    peer = _KeepingTransport()
    seen: list[bytes] = []

    def whole_lines(data: memoryview) -> tuple[list[memoryview], int]:
        used = bytes(data).rfind(b"\n") + 1
        seen.extend(bytes(data[:used]).splitlines(keepends=True))
        return ([data[:used]] if used else []), used

    half = _Half(cast(asyncio.Transport, _KeepingTransport()), done, whole_lines)
    half.peer = cast(asyncio.Transport, peer)
    lines = [b"a" * 10 + b"\n", b"b" * (3 * READ_BUFFER) + b"\n", b"c" * 70000 + b"\n"] * 3
    stream = b"".join(lines)
    for at in range(0, len(stream), 50000):
        _read(half, stream[at : at + 50000])
    assert seen == lines
    assert b"".join(bytes(view) for view in peer.kept) == stream
