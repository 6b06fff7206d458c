"""Serving an aiohttp app so no client can hold the listener: every HTTPS listener
(auth 3025, its workers, proxy web 3080, diagnostics) is started here.

    runner = await limited_runner(app, limits)
    site = LimitedSite(runner, limits, host=H, port=P, ssl_context=ctx)   # or sock=S
    await site.start()

Three limits, from the config's `http_limits`:

- idle_timeout: aiohttp's keep-alive timer, which aiohttp 3.14 arms when a connection
  is made and clears only once a whole request has arrived — so it closes idle
  connections and ones whose headers come a byte at a time alike. (A half-sent body
  is bounded where bodies are read: api/json_input.BODY_TIMEOUT.)
- handshake_timeout: asyncio's `ssl_handshake_timeout` (aiohttp's sites do not pass it).
- max_connections: counted per listener from the moment a connection is accepted, TLS
  handshake included. asyncio never tells the protocol when a handshake fails, so a
  connection still in its handshake is counted until it completes or the handshake
  timeout has passed, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from certgate.daemon.config import HTTPLimits

log = logging.getLogger("certgate.listeners")


async def limited_runner(app: web.Application, limits: HTTPLimits) -> web.AppRunner:
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.idle_timeout.total_seconds(),
    )
    await runner.setup()
    return runner


class ConnectionGate:
    """How many connections a listener holds, and whether it may take one more."""

    def __init__(self, limits: HTTPLimits) -> None:
        self._max = limits.max_connections
        # A handshake that has not finished after this is over one way or the other.
        self._handshake_seconds = limits.handshake_timeout.total_seconds() + 1
        self._handshaking: dict[_Counted, float] = {}
        self._connected: set[_Counted] = set()
        self.refused = 0

    def __len__(self) -> int:
        now = time.monotonic()
        for conn, deadline in list(self._handshaking.items()):
            if deadline < now:
                del self._handshaking[conn]
        return len(self._handshaking) + len(self._connected)

    def full(self) -> bool:
        if len(self) < self._max:
            return False
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("refused connections past max_connections=%d", self._max)
        return True

    def accepted(self, conn: _Counted) -> None:
        self._handshaking[conn] = time.monotonic() + self._handshake_seconds

    def connected(self, conn: _Counted) -> None:
        self._handshaking.pop(conn, None)
        self._connected.add(conn)

    def closed(self, conn: _Counted) -> None:
        self._handshaking.pop(conn, None)
        self._connected.discard(conn)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by the gate while it lives."""

    def __init__(self, handler: RequestHandler, gate: ConnectionGate) -> None:
        self._handler = handler
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gate.connected(self)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        self._handler.eof_received()
        return None  # close the transport (what aiohttp's handler means by returning None)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.closed(self)
        self._handler.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection past the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class LimitedSite(web.BaseSite):
    """A TCP listener (host and port, or an already-bound socket) with the limits."""

    def __init__(
        self,
        runner: web.AppRunner,
        limits: HTTPLimits,
        *,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
        ssl_context: Any = None,
        shutdown_timeout: float = 2.0,
    ) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._sock = sock
        self._limits = limits
        self.gate = ConnectionGate(limits)

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self._port}"

    def _accept(self) -> asyncio.Protocol:
        if self.gate.full():
            return _Refused()
        server = self._runner.server
        assert server is not None
        conn = _Counted(server(), self.gate)
        self.gate.accepted(conn)
        return conn

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        handshake = self._limits.handshake_timeout.total_seconds() if self._ssl_context else None
        if self._sock is not None:
            self._server = await loop.create_server(
                self._accept, sock=self._sock, ssl=self._ssl_context,
                ssl_handshake_timeout=handshake, backlog=self._backlog,
            )  # fmt: skip
        else:
            self._server = await loop.create_server(
                self._accept, self._host, self._port, ssl=self._ssl_context,
                ssl_handshake_timeout=handshake, backlog=self._backlog, reuse_address=True,
            )  # fmt: skip
