"""srv/http1.py: HTTP/1.1 heads and bodies relayed as they come."""

from __future__ import annotations

import asyncio

import pytest

from certgate.srv import http1
from certgate.srv.http1_server import ClientConnection, IdlePool


async def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=http1.MAX_HEAD)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


async def test_heads_keep_order_and_case_and_strip_by_prefix() -> None:
    reader = await _reader(
        b"GET /api?x=1 HTTP/1.1\r\nHost: a\r\nImpersonate-User: root\r\n"
        b"impersonate-group: masters\r\nAccept: */*\r\n\r\n"
    )
    head = await http1.read_head(reader)
    assert head is not None and head.method == "GET" and head.target == "/api?x=1"
    dropped = head.remove_prefix("Impersonate-")
    assert [k for k, _ in dropped] == ["Impersonate-User", "impersonate-group"]
    head.target = "/base/api?x=1"
    assert head.encode() == b"GET /base/api?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    assert await http1.read_head(reader) is None


async def test_chunked_bodies_are_relayed_as_is_and_decoded_on_request() -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    sink = _Sink()
    await http1.relay_body(await _reader(body + b"rest"), sink, http1.Framing("chunked"))  # type: ignore[arg-type]
    assert sink.data == body
    decoded = await http1.read_body(await _reader(body), http1.Framing("chunked"), 100)
    assert decoded == b"hello world"
    with pytest.raises(http1.ProtocolError):
        await http1.read_body(await _reader(body), http1.Framing("chunked"), 5)


async def test_framing_follows_rfc9112() -> None:
    def head(*headers: tuple[str, str], start: str = "HTTP/1.1 200 OK") -> http1.Head:
        return http1.Head(start, list(headers))

    assert http1.body_framing(head(("Content-Length", "3")), response=True).length == 3
    assert (
        http1.body_framing(head(("Transfer-Encoding", "chunked")), response=True).kind == "chunked"
    )
    assert http1.body_framing(head(), response=True).kind == "close"
    assert http1.body_framing(head(start="HTTP/1.1 101 Switching"), response=True).kind == "none"
    assert http1.body_framing(head(start="GET / HTTP/1.1"), response=False).kind == "none"
    with pytest.raises(http1.ProtocolError):
        http1.body_framing(head(("Content-Length", "x")), response=True)


def test_framing_leaves_no_room_for_smuggling() -> None:
    both = http1.Head(
        "POST / HTTP/1.1", [("Content-Length", "4"), ("Transfer-Encoding", "chunked")]
    )
    assert http1.body_framing(both, response=False).kind == "chunked"
    assert both.get("Content-Length") is None  # what is forwarded says one thing only
    two = http1.Head("POST / HTTP/1.1", [("Content-Length", "4"), ("Content-Length", "9")])
    with pytest.raises(http1.ProtocolError):
        http1.body_framing(two, response=False)


@pytest.mark.parametrize(
    "raw",
    [
        # A bare LF inside a value: a server that ends lines at LF reads two headers
        # more, an identity among them, that the relay never saw to strip.
        b"GET /api HTTP/1.1\r\nX-A: x\nImpersonate-User: system:admin\r\n\r\n",
        b"GET /api HTTP/1.1\r\nX-A: x\rImpersonate-User: system:admin\r\n\r\n",
        b"GET /api HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        b"GET /api HTTP/1.1\r\nImpersonate-User : root\r\n\r\n",  # space before the colon
        b"GET /api HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /api HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET /a\nb HTTP/1.1\r\n\r\n",  # a bare LF in the request line
        b"head /api HTTP/1.1\r\n\r\n",  # a method is case-sensitive: not HEAD
        b"GET  /api HTTP/1.1\r\n\r\n",
        b"GET /api HTTP/2.0\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
    ],
)
async def test_a_head_that_two_parsers_could_read_differently_is_refused(raw: bytes) -> None:
    with pytest.raises(http1.ProtocolError):
        await http1.read_head(await _reader(raw))


@pytest.mark.parametrize(
    "body",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",  # Python's int() takes these; servers do not
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5_\r\nhello\r\n0\r\n\r\n",
        b"-0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",  # a bare LF in an extension
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"5\r\nhello\r\n0\r\nX-T\nrailer: 1\r\n\r\n",
        b"5\r\nhello\r\n0\r\nnot a trailer\r\n\r\n",
    ],
)
async def test_a_chunked_body_read_two_ways_is_refused(body: bytes) -> None:
    with pytest.raises(http1.ProtocolError):
        await http1.relay_body(await _reader(body), _Sink(), http1.Framing("chunked"))  # type: ignore[arg-type]
    with pytest.raises(http1.ProtocolError):
        await http1.read_body(await _reader(body), http1.Framing("chunked"), 100)


async def test_interim_answers_are_passed_over_not_taken_for_the_answer() -> None:
    """A `100 Continue` taken for the answer leaves the real one queued on a pooled
    connection: the next user of it would read this user's answer."""
    assert "expect" in http1.HOP_BY_HOP  # not forwarded, so servers rarely send one

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()
        writer.close()

    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    api = await asyncio.start_server(upstream, "127.0.0.1", 0)
    client_side = await asyncio.start_server(idle, "127.0.0.1", 0)
    api_port = api.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", client_side.sockets[0].getsockname()[1]
    )
    client = ClientConnection(reader, writer, IdlePool())

    async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", api_port)

    request = http1.Head("POST /x HTTP/1.1", [("Content-Length", "0")])
    (up_reader, up_writer), answer = await client.exchange(
        "api", dial, request, http1.Framing("none"), peer="API server"
    )
    assert answer.status == 201
    assert await up_reader.readexactly(2) == b"ok"
    up_writer.close()
    await up_writer.wait_closed()
    await client.close()
    for server in (api, client_side):
        server.close()
        await server.wait_closed()
