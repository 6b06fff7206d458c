"""Plain `http://` on an HTTPS port: answered with a redirect to `https://`, not silence.

A browser pointed at `http://proxy:3080` would otherwise see the connection reset by a
failed TLS handshake. The first byte tells the two apart before any TLS work: a TLS
connection starts with a handshake record (0x16); an HTTP request with a method name.

    accept -> peek 1 byte -> 0x16: TLS as usual
                          -> else: read the request head, 301 to https://HOST/PATH, close
"""

from __future__ import annotations

import asyncio
import re
import socket

TLS_HANDSHAKE = 0x16
# A request head bigger than this is no browser's: it gets 400 rather than a redirect.
MAX_HEAD = 8192
# The Host header, checked before it goes into a Location header.
_HOST = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,262}")
_TARGET = re.compile(r"/[\x21-\x7e]{0,2048}")


async def is_plain_http(conn: socket.socket, timeout: float) -> bool:
    """Whether the client spoke first with something other than a TLS handshake."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), ready)
    try:
        async with asyncio.timeout(timeout):
            await readable
    finally:
        loop.remove_reader(conn.fileno())
    try:
        first = conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    return bool(first) and first[0] != TLS_HANDSHAKE


async def redirect_to_https(conn: socket.socket, timeout: float) -> None:
    """Reads the request head and answers 301 to the same host and path over https."""
    loop = asyncio.get_running_loop()
    head = b""
    async with asyncio.timeout(timeout):
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = await loop.sock_recv(conn, MAX_HEAD - len(head))
            if not chunk:
                break
            head += chunk
    await loop.sock_sendall(conn, redirect_answer(head))


def redirect_answer(head: bytes) -> bytes:
    """The whole HTTP/1.1 answer to a plain request whose head is `head`."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    target = parts[1] if len(parts) == 3 else ""
    host = next(
        (line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:")),
        "",
    )
    if not _HOST.fullmatch(host) or not _TARGET.fullmatch(target):
        body = b"this port speaks https only\n"
        return (
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
    location = f"https://{host}{target}"
    return (
        "HTTP/1.1 301 Moved Permanently\r\n"
        f"Location: {location}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
