"""srv/http1.py: HTTP/1.1 heads and bodies relayed as they come."""

from __future__ import annotations

import asyncio

import pytest

from certgate.srv import http1


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
