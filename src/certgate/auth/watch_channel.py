"""The watch stream's two forms, and the WebSocket one's way back up.

A node or kube service holds a watch stream for good and heartbeats every interval. As a
streamed HTTP/1.1 answer the watch occupies its connection, so each service held two
connections to auth: at 10,000 nodes, 20,000 TLS connections (OpenSSL and aiohttp keep
~40 KiB each on auth) and twice the handshakes after an auth restart. Asked for as a
WebSocket (`GET /v1/watch` with `Upgrade: websocket`), the same stream also carries the
service's heartbeats up: one connection per service.

    auth -> watcher   binary messages, each one or more of the stream's JSON lines
                      (snapshot, put, delete, ping, closed), and the answers to requests:
                      {"type": "answer", "id": N} or {... "error": {"error", "message"}}
    watcher -> auth   one JSON object a message: {"type": "heartbeat", "id": N, ...the
                      body of POST /v1/nodes/heartbeat}

Requests are answered in order, one at a time: a service sends one per interval. Any
other message, or one that is not JSON, ends the socket (the service reconnects).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from certgate.api.codec import describe_validation_error
from certgate.api.json_input import MAX_BODY_BYTES, parse_json
from certgate.errors import BadParameter, CertgateError, to_json

# The largest message a watcher may send: what POST /v1/nodes/heartbeat takes, so a
# beat that goes as a call goes up the socket too. Anything bigger ends the socket
# before it is read whole.
MAX_REQUEST_BYTES = MAX_BODY_BYTES
# The kinds of request the socket carries, each a function of its body.
REQUESTS = ("heartbeat",)

Request = Callable[[str, dict[str, Any]], Awaitable[None]]


class LineSink(Protocol):
    """Where the watch's lines go: a streamed answer or a WebSocket."""

    async def write(self, data: bytes) -> None: ...

    def abort(self) -> None:
        """End the stream so the watcher sees it broke (it reconnects and takes a fresh
        snapshot): a clean end could pass for "auth has nothing more to say"."""


class _Lines:
    def __init__(self, request: web.Request) -> None:
        self._request = request

    def abort(self) -> None:
        # Closing the connection: without the final chunk, or without a close frame.
        if self._request.transport is not None:
            self._request.transport.close()


class StreamedLines(_Lines):
    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        super().__init__(request)
        self._response = response

    async def write(self, data: bytes) -> None:
        await self._response.write(data)


class SocketLines(_Lines):
    def __init__(self, request: web.Request, socket: web.WebSocketResponse) -> None:
        super().__init__(request)
        self._socket = socket

    async def write(self, data: bytes) -> None:
        if self._socket.closed:  # the watcher went away: as a streamed answer says it
            raise ConnectionResetError("the watch socket is closed")
        await self._socket.send_bytes(data)


def wants_socket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def open_socket() -> web.WebSocketResponse:
    # No aiohttp heartbeat: the watch's own pings go every few seconds. Ping frames from
    # the watcher are answered (autoping).
    return web.WebSocketResponse(
        autoping=True, heartbeat=None, max_msg_size=MAX_REQUEST_BYTES, compress=False
    )


async def answer_requests(socket: web.WebSocketResponse, handle: Request) -> None:
    """Read the watcher's requests until it closes the socket, answering each.

    A refusal (a node that may no longer announce itself) is answered as an error and
    the socket goes on: the watch itself is still the watcher's. A message that is not a
    request ends the socket.
    """
    async for message in socket:
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            break  # ERROR (too big, bad frame): aiohttp has closed it or will
        raw = message.data if isinstance(message.data, bytes) else message.data.encode()
        try:
            # As every request body is read: no input raises anything but BadParameter
            # (lone surrogates, NaN, deep nesting, huge numbers are refused here).
            body = parse_json(raw)
        except BadParameter as exc:
            await socket.close(code=1003, message=exc.message.encode()[:120])
            break
        kind = body.get("type") if isinstance(body, dict) else None
        ident = body.get("id") if isinstance(body, dict) else None
        if kind not in REQUESTS or not isinstance(ident, int):
            await socket.close(code=1003, message=b"unknown request")
            break
        answer: dict[str, Any] = {"type": "answer", "id": ident}
        try:
            await handle(kind, body)
        except CertgateError as exc:
            answer["error"] = to_json(exc)
        except ValidationError as exc:  # a resource that does not validate
            answer["error"] = to_json(BadParameter(describe_validation_error(kind, "", exc)))
        except (TypeError, ValueError) as exc:  # a body of the wrong shape
            answer["error"] = to_json(BadParameter(f"bad {kind}: {exc}"))
        await socket.send_bytes(json.dumps(answer).encode() + b"\n")
