"""HTTP/1.1 messages relayed on asyncio streams, without buffering bodies.

The proxy's kube listener and the kube service both sit in the middle of kubectl's
HTTP/1.1 connections, where watches and `logs -f` never end and exec, attach and
port-forward switch protocols (101) to WebSocket or SPDY. A framework that owns the
connection (aiohttp, ASGI) hands over the raw stream only for WebSocket, so this module
reads and writes the messages itself:

    read_head(reader)            -> Head (start line + headers, order and case kept)
    body_framing(head, ...)      -> Framing: length n, chunked, until close, or none
    relay_body(reader, writer)   copies a body as it arrives (chunk framing kept as is)
    read_body(reader, framing)   a whole body, for the few answers that are rewritten
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from dataclasses import dataclass, field

from certgate.errors import BadParameter

# The most a message head may take (Go's http server allows as much). Streams are opened
# with it as their StreamReader limit, which is also how much a reader buffers before
# it stops reading: larger than asyncio's 64 KiB default, so streams move in big pieces.
MAX_HEAD = 1024 * 1024
COPY_CHUNK = 256 * 1024
# How much a writer holds before drain() waits (asyncio's default is 64 KiB).
WRITE_BUFFER = 1024 * 1024
# Hop-by-hop headers never forwarded as they came (RFC 9110 §7.6.1); Connection and
# Upgrade are kept for protocol switches. Expect too: the relay sends the body on without
# waiting, and a `100 Continue` the server would send ahead of its answer is one answer
# more on a connection other users share.
HOP_BY_HOP = ("keep-alive", "proxy-connection", "te", "trailer", "proxy-authorization", "expect")
# A header name: an RFC 9110 token. A value: visible characters, spaces and tabs; never a
# lone CR or LF, NUL or another control character. A server behind the relay that ends
# a line at a bare LF (Go's does) would otherwise read headers this relay never saw,
# `Impersonate-User` among them, or another Content-Length.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# A request line: an upper-case method (methods are case-sensitive: `head` is not HEAD,
# and a relay and a server that disagree on whether a body follows lose step), one
# space, a target of visible characters, one space, the version.
_REQUEST_LINE = re.compile(r"[A-Z]+ [\x21-\x7e]+ HTTP/1\.[01]")
_STATUS_LINE = re.compile(r"HTTP/1\.[01] [0-9]{3}( [\t\x20-\x7e\x80-\xff]*)?")


class ProtocolError(BadParameter):
    """The peer broke HTTP/1.1 framing; the connection cannot go on."""


@dataclass
class Head:
    start: str  # "GET /path HTTP/1.1" or "HTTP/1.1 200 OK"
    headers: list[tuple[str, str]] = field(default_factory=list)

    # ---- request / response lines ------------------------------------------------

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0].upper()

    @property
    def target(self) -> str:
        parts = self.start.split(" ")
        return parts[1] if len(parts) >= 2 else "/"

    @target.setter
    def target(self, value: str) -> None:
        method, _, rest = self.start.partition(" ")
        _, _, version = rest.rpartition(" ")
        self.start = f"{method} {value} {version or 'HTTP/1.1'}"

    @property
    def status(self) -> int:
        parts = self.start.split(" ")
        try:
            return int(parts[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"malformed status line {self.start[:80]!r}") from None

    # ---- headers -----------------------------------------------------------------

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def remove(self, name: str) -> None:
        lowered = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lowered]

    def remove_prefix(self, prefix: str) -> list[tuple[str, str]]:
        """Drop every header whose name starts with `prefix`; returns the dropped ones."""
        lowered = prefix.lower()
        dropped = [(k, v) for k, v in self.headers if k.lower().startswith(lowered)]
        self.headers = [(k, v) for k, v in self.headers if not k.lower().startswith(lowered)]
        return dropped

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.headers.append((name, value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def wants_close(self) -> bool:
        connection = (self.get("Connection") or "").lower()
        return "close" in connection or self.start.endswith("HTTP/1.0")

    def is_upgrade(self) -> bool:
        return "upgrade" in (self.get("Connection") or "").lower() and bool(self.get("Upgrade"))


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head, or None when the peer closed between messages."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError("the connection closed in the middle of a message head") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"message head larger than {MAX_HEAD} bytes") from None
    text = data.decode("latin-1")
    lines = text.split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)  # tolerated empty lines before a request (RFC 9112 §2.2)
    if not lines:
        return None
    start = lines[0]
    if not (_REQUEST_LINE.fullmatch(start) or _STATUS_LINE.fullmatch(start)):
        raise ProtocolError(f"malformed start line {start[:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, value = _field(line)
        headers.append((name, value.strip(" \t")))
    return Head(start, headers)


def _field(line: str) -> tuple[str, str]:
    """A header (or trailer) line's name and value: a token, a colon, a value of no
    control characters; ProtocolError otherwise."""
    name, sep, value = line.partition(":")
    if not sep or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
        raise ProtocolError(f"malformed header line {line[:80]!r}")
    return name, value


@dataclass(frozen=True)
class Framing:
    kind: str  # "length", "chunked", "close", "none"
    length: int = 0


def body_framing(head: Head, *, response: bool, request_method: str = "") -> Framing:
    """How the body after `head` ends (RFC 9112 §6.3).

    A message with Transfer-Encoding loses its Content-Length here, and one with
    several different Content-Lengths is refused: the two ends of a relay must never
    disagree on where a request ends (request smuggling)."""
    if response:
        status = head.status
        if request_method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Framing("none")
    encoding = (head.get("Transfer-Encoding") or "").lower()
    if encoding:
        if encoding.split(",")[-1].strip() != "chunked":
            raise ProtocolError(f"unsupported transfer encoding {encoding!r}")
        head.remove("Content-Length")
        return Framing("chunked")
    lengths = {v.strip() for value in head.get_all("Content-Length") for v in value.split(",")}
    if len(lengths) > 1:
        raise ProtocolError("conflicting Content-Length headers")
    length = lengths.pop() if lengths else None
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(f"malformed Content-Length {length!r}")
        return Framing("length", int(length)) if int(length) else Framing("none")
    return Framing("close") if response else Framing("none")


async def relay_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: Framing
) -> None:
    """Copy one body from `reader` to `writer` as it arrives."""
    if framing.kind == "length":
        left = framing.length
        while left:
            data = await reader.read(min(left, COPY_CHUNK))
            if not data:
                raise ProtocolError("the connection closed in the middle of a body")
            writer.write(data)
            left -= len(data)
            await writer.drain()
    elif framing.kind == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = _chunk_size(size_line)
            writer.write(size_line)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = _trailer(await reader.readuntil(b"\r\n"))
                    writer.write(line)
                    if line == b"\r\n":
                        break
                await writer.drain()
                return
            left = size
            while left:
                data = await reader.read(min(left, COPY_CHUNK))
                if not data:
                    raise ProtocolError("the connection closed in the middle of a chunk")
                writer.write(data)
                left -= len(data)
            writer.write(_chunk_end(await reader.readexactly(2)))
            await writer.drain()
    elif framing.kind == "close":
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()


async def read_chunks(reader: asyncio.StreamReader, framing: Framing) -> bytes:
    """The next piece of a body's content as it arrives (b"" at its end): decoded
    chunks for chunked bodies, reads for the others."""
    if framing.kind == "chunked":
        size = _chunk_size(await reader.readuntil(b"\r\n"))
        if size == 0:
            while _trailer(await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b""
        data = await reader.readexactly(size)
        _chunk_end(await reader.readexactly(2))
        return data
    if framing.kind == "close":
        return await reader.read(COPY_CHUNK)
    raise ProtocolError("read_chunks reads chunked or close-delimited bodies")


async def read_body(reader: asyncio.StreamReader, framing: Framing, limit: int) -> bytes:
    """A whole body (decoded), refused past `limit` bytes."""
    if framing.kind == "none":
        return b""
    if framing.kind == "length":
        if framing.length > limit:
            raise ProtocolError(f"body larger than {limit} bytes")
        return await reader.readexactly(framing.length)
    parts: list[bytes] = []
    total = 0
    while piece := await read_chunks(reader, framing):
        total += len(piece)
        if total > limit:
            raise ProtocolError(f"body larger than {limit} bytes")
        parts.append(piece)
    return b"".join(parts)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


# Strict, as both ends of a relay must read a chunked body alike (a lenient reader and
# a strict one disagree on where it ends: request smuggling): hex digits only (not
# Python's "0x", "_", "+" or "-"), an extension of visible characters, CRLF after each
# chunk's data, and trailers that are header lines (`_field`).
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(;[\t\x20-\x7e]*)?\r\n")


def _chunk_size(line: bytes) -> int:
    match = _CHUNK_SIZE_LINE.fullmatch(line)
    if match is None:
        raise ProtocolError(f"malformed chunk size {line[:40]!r}")
    return int(match.group(1), 16)


def _chunk_end(crlf: bytes) -> bytes:
    if crlf != b"\r\n":
        raise ProtocolError("a chunk's data does not end with CRLF")
    return crlf


def _trailer(line: bytes) -> bytes:
    """A trailer line (or the empty line that ends them), read by the header rule."""
    if line != b"\r\n":
        _field(line.decode("latin-1").removesuffix("\r\n"))
    return line


def closed_waiter(writer: asyncio.StreamWriter) -> asyncio.Future[None]:
    """A future done when `writer`'s connection is lost: one per connection, never
    cancelled (cancelling a wait_closed() cancels the stream's own close future)."""
    return asyncio.ensure_future(writer.wait_closed())


async def while_connected(job: Awaitable[None], gone: asyncio.Future[None]) -> None:
    """Run `job` (relaying an answer to a client) until it ends or `gone` (the client's
    closed_waiter) is done; then ConnectionError. A watch whose user left produces
    nothing to write that would fail, so without this it would hold its upstream open."""
    relay = asyncio.ensure_future(job)
    try:
        await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not relay.done():
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay
    if relay.cancelled():
        raise ConnectionError("the client left in the middle of an answer")
    relay.result()


def streaming(writer: asyncio.StreamWriter) -> None:
    """Let `writer` hold more before drain() waits: fewer pauses on long streams."""
    writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await writer.wait_closed()


def response_head(status: int, reason: str, headers: list[tuple[str, str]]) -> Head:
    return Head(f"HTTP/1.1 {status} {reason}", headers)
