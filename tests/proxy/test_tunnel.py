"""The relay of a direct-tcpip channel to a node's TCP port (proxy/tunnel.py)."""

from __future__ import annotations

import asyncio
import gc

from certgate.proxy.tunnel import open_tunnel


async def test_a_channel_that_never_opens_closes_the_node_connection() -> None:
    # The client can hang up while the proxy dials the node: asyncssh then drops the
    # session open_tunnel returned without a word to it. The node's connection must be
    # closed then, not left open (and collected unclosed).
    accepted = asyncio.Event()
    closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        closed.set_result(await reader.read())  # until the proxy's side closes
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        session = await open_tunnel("127.0.0.1", port, 5)
        await asyncio.wait_for(accepted.wait(), 5)
        del session
        gc.collect()
        assert await asyncio.wait_for(closed, 5) == b""
    finally:
        server.close()
        await server.wait_closed()
