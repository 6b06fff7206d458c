"""An HTTP/1.1 relay server: the listener lifecycle and the request/answer relay that the
proxy's kube listener and the kube service share.

    Http1Server(accept, call, log, limits)
      start(host, port, tls)       asyncio server; one task per client connection, tracked;
                                   Http1Limits bound what one client may hold (below)
      per connection:              accept(client) -> context, or None to hang up at once
                                   call(head, client, context) -> may the connection go on?
      close()                      stop listening, cancel the connections, close idle upstreams

    ClientConnection (one per client connection)
      exchange(key, dial, head, framing)   request head + body to the upstream `key` on a
                                           kept-alive connection; its answer's head
      relay_answer(...)                    the answer's body back, as it arrives; whether the
                                           client connection may carry another request

Upstream connections are kept while their client connection lives (kubectl sends several
calls on one), then handed to an IdlePool for the next client: without it every kubectl
command costs a TLS handshake on every hop behind the first.

    LocalServers                   the servers of this process by the address they
                                   announce: a relay whose upstream is one of them hands
                                   it the request and the client connection, in-process
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from certgate.errors import BadParameter
from certgate.srv.http1 import (
    MAX_HEAD,
    Framing,
    Head,
    ProtocolError,
    close_writer,
    closed_waiter,
    read_head,
    relay_body,
    streaming,
    while_connected,
)

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Http1Limits:
    """What clients may hold of a listener, as `http_limits` for auth and the web port:
    without them a client that connects and sends nothing (or a header a byte a minute)
    holds a socket and a task for ever, and enough of them take every file descriptor.

    - handshake_timeout: the TLS handshake, from the connection's start;
    - idle_timeout: each request head, from the connection's start or the end of the
      answer before (an idle keep-alive connection, or a head sent a byte at a time);
      streams (watch, exec, port-forward) are bodies and answers, never timed here;
    - max_connections: connections past their handshake at once; more are closed at
      once.
    """

    max_connections: int = 25_000
    idle_timeout: float = 60.0
    handshake_timeout: float = 10.0


# Opens a new connection to one upstream (raises CertgateError when it cannot).
Dial = Callable[[], Awaitable[Connection]]
Context = TypeVar("Context")


class IdlePool:
    """Kept-alive upstream connections between client connections, by destination.

    A connection handed back is reused by the next client; one the far side closed
    meanwhile fails on first use, so callers retry a bodiless request once on a fresh
    connection (`exchange` does).
    """

    def __init__(self, per_key: int = 8) -> None:
        self._per_key = per_key
        self._idle: dict[str, list[Connection]] = {}

    def take(self, key: str) -> Connection | None:
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if not conn[1].is_closing() and not conn[0].at_eof():
                return conn
            conn[1].close()
        return None

    def give(self, key: str, conn: Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if conn[1].is_closing() or conn[0].at_eof() or len(idle) >= self._per_key:
            conn[1].close()
            return
        idle.append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                writer.close()
        self._idle.clear()


class Upstreams:
    """The upstream connections of one client connection, one per key: kept while the
    client's connection lives, then handed to the server's idle pool."""

    def __init__(self, pool: IdlePool) -> None:
        self._pool = pool
        self._open: dict[str, Connection] = {}

    async def get(self, key: str, dial: Dial) -> tuple[Connection, bool]:
        """A connection to `key`, and whether it was used before (may be stale)."""
        found = self._open.get(key)
        if found is not None and not found[1].is_closing():
            return found, True
        found = self._pool.take(key)
        reused = found is not None
        if found is None:
            found = await dial()
        self._open[key] = found
        return found, reused

    def drop(self, key: str) -> None:
        """Never reuse `key`'s connection (it failed, or an answer was cut off)."""
        found = self._open.pop(key, None)
        if found is not None:
            found[1].close()

    def release(self) -> None:
        for key, conn in self._open.items():
            self._pool.give(key, conn)
        self._open.clear()


class ClientConnection:
    """One client connection to an Http1Server, and the upstream connections behind it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pool: IdlePool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.upstreams = Upstreams(pool)
        self.gone = closed_waiter(writer)  # the client's connection is lost

    def peer_certificate(self) -> bytes | None:
        """The client's TLS certificate (DER), already checked by the handshake."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    async def exchange(
        self, key: str, dial: Dial, head: Head, framing: Framing, *, peer: str, fresh: bool = False
    ) -> tuple[Connection, Head]:
        """Send the request (`head`, then its body from the client) to the upstream `key`;
        the connection and the answer's head. `fresh`: on a new connection of its own
        that is never kept (protocol switches). Raises CertgateError, OSError or
        IncompleteReadError when the upstream cannot be reached or breaks off."""
        for attempt in (1, 2):
            if fresh:
                connection, reused = await dial(), False
            else:
                connection, reused = await self.upstreams.get(key, dial)
            up_reader, up_writer = connection
            try:
                up_writer.write(head.encode())
                await relay_body(self.reader, up_writer, framing)
                response = await read_head(up_reader)
                # Interim answers (100 Continue, 103 Early Hints) come before the answer
                # and are not it: passed over, or the connection would lose step.
                while response is not None and 100 <= response.status < 200:
                    if response.status == 101:
                        break
                    response = await read_head(up_reader)
                if response is None:
                    raise ProtocolError(f"the {peer} closed the connection")
                return connection, response
            except BaseException as exc:
                if not fresh:
                    self.upstreams.drop(key)
                up_writer.close()
                if not isinstance(exc, OSError | ProtocolError | asyncio.IncompleteReadError):
                    raise
                # A kept-alive connection the far side closed meanwhile: once more on a
                # fresh one, if nothing of a body was sent.
                if attempt == 2 or not reused or framing.kind != "none":
                    raise
        raise AssertionError("unreachable")

    async def relay_response(
        self, response: Head, up_reader: asyncio.StreamReader, framing: Framing
    ) -> None:
        """The answer's head and body to the client as they come."""
        self.writer.write(response.encode())
        if framing.kind == "length":
            await relay_body(up_reader, self.writer, framing)
        else:  # streams (watches, logs -f) end when the user leaves
            await while_connected(relay_body(up_reader, self.writer, framing), self.gone)

    async def relay_answer(
        self,
        key: str,
        request: Head,
        response: Head,
        up_reader: asyncio.StreamReader,
        framing: Framing,
        relay: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Relay the answer from `key` (`relay` when the caller rewrites it, else as it
        came); whether the client connection may carry another request."""
        try:
            if relay is not None:
                await relay()
            else:
                await self.relay_response(response, up_reader, framing)
        except BaseException:
            # Cut off in the middle of an answer (the user left a watch, say): the rest
            # of it is still coming, so the connection must never serve anyone again.
            self.upstreams.drop(key)
            raise
        if framing.kind == "close" or response.wants_close():
            self.upstreams.drop(key)
            return False
        return not request.wants_close()

    async def close(self) -> None:
        self.upstreams.release()
        await close_writer(self.writer)
        self.gone.cancel()  # done by now, unless the close timed out


# Serves one request on a client connection handed over in this process; whether the
# connection may carry another (as Http1Server's `call`).
LocalCall = Callable[[Head, "ClientConnection"], Awaitable[bool]]


class LocalServers:
    """Http1 servers of this process, by the address they announce to the cluster.

    When the proxy's upstream is a service of its own process (`certgate start` with
    both roles), dialing it would only encrypt every byte to itself and decrypt it
    again: two TLS legs on the same CPUs. The service registers here instead, and the
    proxy hands it the request as it would have sent it (its identity headers
    included), with the client connection to answer on. The service decides exactly as
    for a request from a remote proxy; only the mutual TLS check of the caller has
    nothing to check, the caller being this process."""

    def __init__(self) -> None:
        self._by_addr: dict[str, LocalCall] = {}

    def add(self, addr: str, call: LocalCall) -> None:
        self._by_addr[addr] = call

    def remove(self, addr: str) -> None:
        self._by_addr.pop(addr, None)

    def get(self, addr: str) -> LocalCall | None:
        return self._by_addr.get(addr)


class Http1Server(Generic[Context]):
    """Accepts TLS connections and serves their requests one after the other."""

    def __init__(
        self,
        accept: Callable[[ClientConnection], Context | None],
        call: Callable[[Head, ClientConnection, Context], Awaitable[bool]],
        log: logging.Logger,
        limits: Http1Limits | None = None,
    ) -> None:
        self._accept = accept
        self._call = call
        self._log = log
        self.limits = limits or Http1Limits()
        self.refused = 0  # connections closed past max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._pool = IdlePool()

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> int:
        self._server = await asyncio.start_server(
            self._serve,
            host or None,
            port,
            ssl=context,
            limit=MAX_HEAD,
            reuse_address=True,
            ssl_handshake_timeout=self.limits.handshake_timeout,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._pool.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.limits.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                self._log.warning(
                    "refusing connections past max_connections=%d", self.limits.max_connections
                )
            writer.transport.abort()
            return
        self._connections.add(task)
        streaming(writer)
        client = ClientConnection(reader, writer, self._pool)
        try:
            context = self._accept(client)
            if context is None:
                return
            while True:
                try:
                    async with asyncio.timeout(self.limits.idle_timeout):
                        head = await read_head(reader)
                except TimeoutError:
                    self._log.debug("closed: no request within %ss", self.limits.idle_timeout)
                    break
                if head is None or not await self._call(head, client, context):
                    break
        except (ConnectionError, ProtocolError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            self._log.debug("connection ended: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            self._log.exception("connection failed")
        finally:
            self._connections.discard(task)
            await client.close()


async def both(*jobs: Awaitable[None], log: logging.Logger) -> None:
    """Run both directions of a stream until one ends (the other side then has nothing
    to say)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(
                result, ConnectionError | OSError | BadParameter
            ):
                log.warning("stream relay failed: %r", result)
