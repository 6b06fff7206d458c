"""The relay of a direct-tcpip channel to a node's TCP port (proxy/tunnel.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from certgate.proxy.tunnel import open_tunnel
from tests.support.wait import eventually_async


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


async def test_the_proxy_never_relays_to_a_link_local_or_unspecified_address() -> None:
    # A node announces its own address; the jump host relays raw bytes there. 0.0.0.0
    # reaches the proxy's own loopback services, 169.254.169.254 a cloud's metadata.
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # What a relay to 0.0.0.0 would reach: this machine's loopback listener.
        _, probe = await asyncio.open_connection("0.0.0.0", port)
        (await asyncio.wait_for(accepted.get(), 5)).close()
        probe.close()
        for host in ("0.0.0.0", "169.254.169.254", "::ffff:169.254.169.254", "224.0.0.1"):
            with pytest.raises(OSError, match="never a node's"):
                await open_tunnel(host, port, 5)
        assert accepted.empty()
        # Nodes on the proxy's own machine (loopback) are still dialled.
        session = await open_tunnel("127.0.0.1", port, 5)
        (await asyncio.wait_for(accepted.get(), 5)).close()
        del session
        gc.collect()
    finally:
        server.close()
        await server.wait_closed()


class _Channel:
    """What a NodeTunnel writes the node's bytes to (an asyncssh channel)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass


class _NodeServer:
    """A node's listener: hands over each accepted connection, and closes them all at the
    end (asyncio.Server.close leaves accepted ones open: a ResourceWarning later)."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> _NodeServer:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            await self.accepted.put(writer)
            await reader.read()
            writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self.server.wait_closed()


async def test_a_cut_channel_leaves_the_node_side_open_until_the_node_hangs_up() -> None:
    # The proxy cut the client (a lock): the node sees the same lock and must be able to
    # end its session as locked, not find its connection dropped under it.
    async with _NodeServer() as node:
        plain = await open_tunnel("127.0.0.1", node.port, 5)
        lingering = await open_tunnel("127.0.0.1", node.port, 5)
        channels = [_Channel(), _Channel()]
        for tunnel, channel in zip((plain, lingering), channels, strict=True):
            tunnel.connection_made(channel)
        first, second = await node.accepted.get(), await node.accepted.get()
        first.write(b"hello")
        second.write(b"hello")
        await eventually_async(lambda: all(c.data == b"hello" for c in channels))

        lingering.linger(30)
        plain.connection_lost(None)
        lingering.connection_lost(None)
        assert plain.node.transport is not None and plain.node.transport.is_closing()
        assert lingering.node.transport is not None
        assert not lingering.node.transport.is_closing()
        # The node's last words go nowhere; its hang-up closes the proxy's side at once.
        for writer in (first, second):
            writer.write(b" last words")
            writer.write_eof()
        await eventually_async(lingering.node.transport.is_closing)
        assert [c.data for c in channels] == [b"hello", b"hello"]


async def test_a_cut_channel_closes_the_node_side_after_the_linger() -> None:
    async with _NodeServer() as node:
        tunnel = await open_tunnel("127.0.0.1", node.port, 5)
        tunnel.connection_made(_Channel())
        await node.accepted.get()
        tunnel.linger(0.05)
        tunnel.connection_lost(None)
        assert tunnel.node.transport is not None
        await eventually_async(tunnel.node.transport.is_closing)
