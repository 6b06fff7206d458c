"""splice(): two TCP connections joined at the transports, as the kube listener joins
kubectl's and the kube service's after a protocol switch."""

from __future__ import annotations

import asyncio

from certgate.srv.splice import splice

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
