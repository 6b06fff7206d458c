"""Relaying a direct-tcpip channel to a node's TCP port, losing no early bytes.

asyncssh's own forwarder drops what the far side sends before the channel is attached,
and an SSH server speaks first (its version line): the client then sees a broken banner.
Here the TCP side buffers until the channel side is connected, and each side pauses the
other when its buffers fill, so a fast node cannot swamp a slow client.

When the proxy itself cuts the client (a lock, proxy/sshd.py), the node's side is left
open for a moment (`linger`): the node sees the same lock and ends its session as
locked — message, recording, `session.end` — rather than as a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import weakref
from typing import Any, cast

import asyncssh


class _NodeSide(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.channel: NodeTunnel | None = None
        self._early: list[bytes] = []
        self._early_eof = False
        # Set by `linger`: the channel is gone on purpose; what the node still says is
        # dropped, and its side closes when the node hangs up or after this many seconds.
        self._linger: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(): uvloop's transports have the interface without the base class.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return
        if self.channel is not None and self.channel.chan is not None:
            self.channel.chan.write(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool:
        if self._linger is not None:
            return False
        if self.channel is not None and self.channel.chan is not None:
            self.channel.chan.write_eof()
        else:
            self._early_eof = True
        return True  # keep our side open for what the client still sends

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is None and self.channel is not None and self.channel.chan is not None:
            self.channel.chan.close()

    def linger(self, seconds: float) -> None:
        """From now on, the channel closing leaves the node's side open for `seconds`
        (unless the node hangs up first)."""
        self._linger = seconds

    def channel_closed(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._linger is None:
            self.transport.close()
        else:
            asyncio.get_running_loop().call_later(self._linger, self.transport.close)

    def pause_writing(self) -> None:
        if self.channel is not None and self.channel.chan is not None:
            self.channel.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.channel is not None and self.channel.chan is not None:
            self.channel.chan.resume_reading()

    def close_unattached(self) -> None:
        """Close the node's side if no channel ever came for it."""
        if self.channel is None and self.transport is not None:
            with contextlib.suppress(RuntimeError):  # the event loop is already closed
                self.transport.close()

    def attach(self, channel: NodeTunnel) -> None:
        self.channel = channel
        assert channel.chan is not None
        for chunk in self._early:
            channel.chan.write(chunk)
        self._early.clear()
        if self._early_eof:
            channel.chan.write_eof()


class NodeTunnel(asyncssh.SSHTCPSession[bytes]):
    """The channel's side of a tunnel to a node: what asyncssh serves the channel with."""

    def __init__(self, node: _NodeSide) -> None:
        self.node = node
        self.chan: Any = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.node.attach(self)

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.node.transport is not None:
            self.node.transport.write(data)

    def eof_received(self) -> bool:
        if self.node.transport is not None and self.node.transport.can_write_eof():
            self.node.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.node.channel_closed()

    def linger(self, seconds: float) -> None:
        """When the channel closes, keep the node's side open up to `seconds` more."""
        self.node.linger(seconds)

    def pause_writing(self) -> None:
        if self.node.transport is not None:
            self.node.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.node.transport is not None:
            self.node.transport.resume_reading()


async def open_tunnel(host: str, port: int, timeout: float) -> NodeTunnel:
    """Connect to host:port (TimeoutError/OSError on failure) and return the session
    that relays a channel to it."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        addresses = await _dialable_addresses(host, port)
        failure: OSError | None = None
        for address in addresses:
            try:
                _, node = await loop.create_connection(_NodeSide, address, port)
                break
            except OSError as exc:
                failure = exc
        else:
            assert failure is not None
            raise failure
    session = NodeTunnel(node)
    # If the channel never opens after all (the client hung up while we dialled),
    # asyncssh drops the session without telling it: close the node's side then.
    weakref.finalize(session, node.close_unattached)
    return session


async def _dialable_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to that may be a node's.

    A node announces its own address, and the jump host relays raw bytes to it: a node
    announcing 169.254.169.254:80 (a cloud's metadata service, whose answers carry the
    proxy's credentials) or 0.0.0.0 (the proxy's own loopback) would make the proxy a
    relay to it. Link-local, multicast and unspecified addresses are never a node's;
    checked after resolving, so a name that resolves to one is refused alike.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = list(dict.fromkeys(str(info[4][0]) for info in infos))
    allowed = [address for address in found if not _never_a_node(address)]
    if not allowed:
        raise OSError(
            f"{host} is at {', '.join(found)}: a link-local, multicast or unspecified "
            "address is never a node's"
        )
    return allowed


def _never_a_node(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip.is_multicast or ip.is_unspecified
