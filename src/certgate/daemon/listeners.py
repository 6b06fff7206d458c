"""Serving an aiohttp app so no client can hold a listener: every HTTPS listener
(auth 3025 and its workers, proxy web 3080, diagnostics) is started here.

    runner = await limited_runner(app, limits)
    site = LimitedSite(runner, limits, sockets)          # sockets bound and listening
    await site.start()

    accept ──> over max_connections? ──yes──> closed at once (before any TLS work)
                      │ no
                      ▼
               first byte; a handshake slot (handshakes_at_once); the TLS handshake:
               all within handshake_timeout of the accept ──late──> closed, uncounted
                      │
                      ▼
               aiohttp's handler; idle_timeout until each whole request has arrived

The limits come from the config's `http_limits`:

- idle_timeout is aiohttp's keep-alive timer, which aiohttp 3.14 arms when a connection
  is made and clears only once a whole request has arrived — so it closes idle
  connections and ones whose headers come a byte at a time alike. (A half-sent *body*
  is bounded where bodies are read: api/json_input.BODY_TIMEOUT.)
- handshake_timeout bounds the wait for the first byte and a slot, and the TLS
  handshake, all counted from the accept (aiohttp's sites do not pass one on).
- max_connections counts every connection from accept to close. asyncio's own server
  creates the TLS state for a connection before anything can refuse it, and never
  tells the protocol when a handshake fails; so this module runs the accept loop
  itself and hands each admitted socket to `loop.connect_accepted_socket`.
- TLS connections share one read buffer per event loop (daemon/tls_accept.py): asyncio
  would give each its own 256 KiB, which at 10,000 idle nodes is gigabytes.
- Handshakes run at most handshakes_at_once at a time, first come first served. When
  10,000 nodes connect at once (an auth restart), each handshake is ~2 ms of this
  process's CPU: run all together, every one progressed slowly, none finished before
  its client gave up, and the retries started the work over (auth answered nothing).
  Taking a few at a time, those finish in milliseconds; the rest wait with their
  ClientHello unread, costing no CPU. A connection still waiting when its
  handshake_timeout (counted from the accept) runs out is closed without any TLS work
  (its client, which waits longer, retries), so the work done is for clients that are
  still there. A client that sends nothing holds no slot at all: the slot is taken once
  its first byte has arrived.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from certgate.daemon.config import HTTPLimits
from certgate.daemon.plain_http import is_plain_http, redirect_to_https
from certgate.daemon.tls_accept import accept_tls

log = logging.getLogger("certgate.listeners")

# Seconds aiohttp gives requests in flight when a listener stops.
SHUTDOWN_TIMEOUT = 2.0
# Connections the kernel queues until they are accepted (capped by
# net.core.somaxconn, 4096 on current Linux): a burst past it gets SYNs dropped and
# retried by the client's kernel, slower than waiting in the queue.
LISTEN_BACKLOG = 4096


async def limited_runner(app: web.Application, limits: HTTPLimits) -> web.AppRunner:
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=limits.idle_timeout.total_seconds(),
    )
    await runner.setup()
    return runner


def bound_sockets(host: str | None, port: int, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for HOST:PORT, one per address the host names (all interfaces,
    IPv4 and IPv6, for an empty host), all on one port; `reuse_port` lets several
    processes share them (SO_REUSEPORT)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


_told: set[int] = set()
# Files a process needs besides its connections: the store, logs, recordings, sockets
# it dials. A connection past the open-files limit would fail in accept, after the work.
FILES_RESERVE = 256


def open_files_for(connections: int) -> int:
    """Let the process open as many files as the hard limit allows (each connection is
    one; the soft limit is often 1,024, far under `max_connections`), and return the
    cap that limit leaves: `connections`, or less when the hard limit is lower, said
    once in the log, so a connection past it is refused at once rather than in accept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard == resource.RLIM_INFINITY or hard - FILES_RESERVE >= connections:
        return connections
    cap = max(hard - FILES_RESERVE, 1)
    if connections not in _told:
        _told.add(connections)  # once per process and cap, not once per listener
        log.info(
            "max_connections %d lowered to %d by the open-files limit (%d); "
            "raise LimitNOFILE for more",
            connections,
            cap,
            hard,
        )
    return cap


class ConnectionGate:
    """How many connections a listener holds, from accept to close."""

    def __init__(self, max_connections: int) -> None:
        self.max = max_connections
        self.open = 0
        self.refused = 0

    def admit(self) -> bool:
        if self.open < self.max:
            self.open += 1
            return True
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("refusing connections past max_connections=%d", self.max)
        return False

    def release(self) -> None:
        self.open -= 1


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection; tells the gate when it closes."""

    def __init__(self, handler: RequestHandler, gate: ConnectionGate) -> None:
        self._handler = handler
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        self._handler.eof_received()
        return None  # close the transport, as aiohttp's handler does

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.release()
        self._handler.connection_lost(exc)


class _AcceptLoop:
    """What aiohttp's site keeps as its "server": close() stops accepting."""

    def __init__(
        self,
        sockets: list[socket.socket],
        site: LimitedSite,
        ssl_context: Any,
        limits: HTTPLimits,
    ) -> None:
        self.sockets = sockets
        self._site = site
        self._ssl = ssl_context
        self._handshake = limits.handshake_timeout.total_seconds()
        self._loops = [asyncio.create_task(self._accept(sock)) for sock in sockets]
        for task in self._loops:
            task.add_done_callback(_log_crash)
        self._handshakes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(limits.handshakes_at_once)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listening)
            except OSError as exc:  # out of file descriptors, say: let some close
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if not self._site.gate.admit():
                conn.close()
                continue
            task = asyncio.create_task(self._start(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _start(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._handshake
        try:
            if self._ssl and await is_plain_http(conn, self._handshake):
                await redirect_to_https(conn, self._handshake)
                conn.close()
                self._site.gate.release()
                return
            if self._ssl:
                await self._handshake_in_turn(loop, conn, deadline)
            else:
                await loop.connect_accepted_socket(self._site.protocol, conn)
        except asyncio.CancelledError:
            conn.close()
            self._site.gate.release()
            raise
        except Exception as exc:  # a failed or slow handshake: the client's problem
            log.debug("connection dropped before its first request: %s", exc)
            conn.close()
            self._site.gate.release()

    async def _handshake_in_turn(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, deadline: float
    ) -> None:
        """The TLS handshake, once a slot is free, all by `deadline`."""
        async with asyncio.timeout_at(deadline):
            await self._slots.acquire()
        try:
            # asyncio's own handshake timer ends it cleanly (cancelling it from outside
            # could land just after the handshake, with the connection already counted).
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no handshake slot within handshake_timeout")
            await accept_tls(loop, self._site.protocol, conn, self._ssl, left)
        finally:
            self._slots.release()

    def close(self) -> None:
        for task in [*self._loops, *self._handshakes]:
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._loops, *self._handshakes, return_exceptions=True)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a listener stopped accepting connections: %r", task.exception())


class LimitedSite(web.BaseSite):
    """A listener on already-bound sockets, with the connection cap and timeouts."""

    def __init__(
        self,
        runner: web.AppRunner,
        limits: HTTPLimits,
        sockets: list[socket.socket],
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sockets = sockets
        self._limits = limits
        self.gate = ConnectionGate(limits.max_connections)

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host, port = self._sockets[0].getsockname()[:2]
        return f"{scheme}://{host}:{port}"

    def protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        return _Counted(server(), self.gate)

    async def start(self) -> None:
        await super().start()
        self.gate.max = open_files_for(self._limits.max_connections)
        accept = _AcceptLoop(self._sockets, self, self._ssl_context, self._limits)
        self._server = accept  # type: ignore[assignment]
