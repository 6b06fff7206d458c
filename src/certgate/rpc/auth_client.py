"""A thin client for the auth service's HTTPS API, sync (CLIs) and async (services).

Answers are JSON; an error answer is turned back into the certgate error that caused it
(`errors.from_json`), so a refusal reads the same on both sides of the wire.

The sync client is httpx; the async one is aiohttp, imported at its first call (cgsh
imports this module and never makes one). A service calls auth for every recording,
audit batch and tracker change: a small PUT over TLS cost 1.2 ms of CPU with httpx
and 0.28 ms with aiohttp on the same server (measured apart: bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json as jsonlib
import ssl
import sys
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, cast

import httpx

# httpcore asks whether it runs under trio by importing sniffio inside a function it
# calls several times per request. sniffio is not installed with certgate, and a failed
# import searches every sys.path entry again: ~38 us a call (measured here), visible on
# every session start. A None in sys.modules makes that import fail at once (~1.5 us);
# httpcore then assumes asyncio, as it did. Only when sniffio is really absent.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

from certgate.errors import (
    NOT_APPLIED_HEADER,
    CertgateError,
    ConnectionProblem,
    from_json,
    what_broke,
)
from certgate.rpc.failover import AuthAddresses

DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Services (nodes, proxies) wait longer for the connection itself: the connect timeout
# covers the TLS handshake too, and an auth that 10,000 nodes connect to at
# once (its restart) takes handshakes a few at a time and lets the rest wait up to its
# handshake_timeout (10 s by default; daemon/listeners.py). A node that gave up at 5 s
# threw away its place in that queue and came back at the end of it, with the work
# already done for it lost: at 10,000 nodes auth answered nothing. 30 s is above the
# server's 10 s with room for the kernel's accept queue; the cost is that a
# black-holed auth address (no RST) is tried for 30 s before the next one.
CONNECT_TIMEOUT = 30.0
# A service's call fails when auth sends nothing for this long.
READ_TIMEOUT = 15.0
# How long an idle connection to auth is kept for the next call: above a node's
# heartbeat interval (10 s by default; 30 s on large fleets), so heartbeats reuse one
# connection rather than pay a new mTLS handshake each (auth's dearest work per beat);
# below auth's default idle_timeout (60 s), so auth is not the one closing it as the
# node sends. httpx's default, 5 s, made every heartbeat a new handshake.
KEEPALIVE_EXPIRY = 50.0
DOWNLOAD_CHUNK = 256 * 1024
# Connections a service keeps to one auth address at most.
MAX_CONNECTIONS = 64
# A streamed request body that makes no progress this long fails the call.
WRITE_STALL = 15.0
SOCKET_CLOSE_SECONDS = 2.0
# What an auth answers when it cannot serve now (its store out of reach, or it cannot
# confirm locks): with several addresses, the call goes on to the next.
UNAVAILABLE = 503
# Calls that write nothing, which an auth that cannot serve passes to the next as they are.
_READS = frozenset({"GET", "HEAD"})


class NotASocket(ConnectionProblem):
    """Auth answered a WebSocket request with a plain answer: it is of a version without
    the socket form, and the caller uses the plain one."""


class _Answer(Protocol):
    """What _decode reads of an answer: an httpx.Response or an Answer."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


@dataclass(frozen=True)
class Answer:
    """An auth answer read whole (what AsyncAuthClient.raw returns)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class StreamedAnswer:
    """An answer whose body is read as it comes (AsyncAuthClient.raw_stream)."""

    def __init__(self, response: Any) -> None:
        self._response = response  # an aiohttp ClientResponse

    @property
    def status_code(self) -> int:
        return int(self._response.status)

    @property
    def headers(self) -> Mapping[str, str]:
        return cast(Mapping[str, str], self._response.headers)

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, any content-encoding undone."""
        return cast(AsyncIterator[bytes], self._response.content.iter_any())

    async def aread(self) -> bytes:
        return cast(bytes, await self._response.read())


def _raise_for(response: _Answer) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise from_json(response.status_code, body)


def _decode(response: _Answer) -> Any:
    _raise_for(response)
    if response.status_code == 204 or not response.content:
        return None
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def _unreachable(base_url: str, exc: Exception) -> CertgateError:
    """An httpx failure (the command-line client), in the words _connection_problem has."""
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return ConnectionProblem(
            f"cannot verify the TLS certificate of {base_url}: pass --insecure for a "
            "self-signed proxy, or check the address"
        )
    no_connection = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
    timed_out = isinstance(exc, httpx.TimeoutException)
    return _connection_problem(base_url, exc, no_connection, timed_out)


def _unreachable_over_aiohttp(base_url: str, exc: Exception) -> CertgateError:
    """An aiohttp failure (the services' client), in the same words."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ConnectionProblem(f"cannot verify the TLS certificate of {base_url}: {exc}")
    no_connection = isinstance(exc, aiohttp.ConnectionTimeoutError)
    return _connection_problem(base_url, exc, no_connection, isinstance(exc, TimeoutError))


def _connection_problem(
    base_url: str, exc: Exception, no_connection: bool, timed_out: bool
) -> CertgateError:
    if no_connection:
        # A busy server takes TLS handshakes a few at a time (daemon/listeners.py): a
        # connection still queued for one when the client gives up is this, not a refusal.
        return ConnectionProblem(
            f"{base_url} did not answer in time: no connection within the timeout (TLS "
            "handshake included); it is busy or unreachable, try again"
        )
    if timed_out:
        return ConnectionProblem(f"{base_url} did not answer in time: it may be busy, try again")
    return ConnectionProblem(f"cannot reach {base_url}: {what_broke(exc)}")


def _query(params: Any) -> Any:
    """Query parameters as httpx wrote them (None as "", booleans as true/false): aiohttp
    takes only strings and numbers. A list of pairs passes as it is."""
    if not isinstance(params, Mapping):
        return params
    return {
        key: "" if value is None else str(value).lower() if isinstance(value, bool) else value
        for key, value in params.items()
    }


async def _lines(response: Any) -> AsyncIterator[str]:
    """An answer's lines as they come, without their line ends; no bound on a line's
    length (aiohttp's readline has one)."""
    pending = bytearray()
    async for chunk in response.content.iter_any():
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            if line := line.rstrip(b"\r"):
                yield line.decode("utf-8", errors="replace")
    if pending.rstrip(b"\r"):
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")


async def _paced(chunks: AsyncIterable[bytes], deadline: asyncio.Timeout) -> AsyncIterator[bytes]:
    """`chunks`, each taken only once the last was written: the deadline moves on with
    every one, and is lifted after the last (the answer has its own read timeout)."""
    loop = asyncio.get_running_loop()
    async for chunk in chunks:
        deadline.reschedule(loop.time() + WRITE_STALL)
        yield chunk
    deadline.reschedule(None)


class AuthClient:
    """Blocking client (command-line tools)."""

    def __init__(
        self, base_url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, verify=context, timeout=DEFAULT_TIMEOUT, headers=headers
        )

    def call(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        return self.call_status(method, path, json=json, params=params)[0]

    def call_status(
        self, method: str, path: str, json: Any = None, params: Any = None
    ) -> tuple[Any, int]:
        """As `call`, with the answer's status (201 created, 200 found: a create that
        found what was asked for already there)."""
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _decode(response), response.status_code

    def download(self, path: str, out: BinaryIO, params: Any = None) -> int:
        """GET `path` into `out` a chunk at a time (a large answer never sits in
        memory); returns the bytes written. An error answer raises as `call` does."""
        written = 0
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return written

    def close(self) -> None:
        self._http.close()


class AsyncAuthClient:
    """Non-blocking client (proxy, node), over one auth address or several.

    With several (`--auth-server A,B`), a call goes to the one that worked last; if it
    cannot be connected to, the same call is sent to the next at once (nothing reached
    the dead one, so nothing is sent twice), and later calls start there. A failure once
    a request is under way marks its address too, but is raised: the caller's loop
    (heartbeat, watch, audit spool) retries with its own backoff.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        context: ssl.SSLContext,
        headers: dict[str, str] | None = None,
    ):
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self._addresses = AuthAddresses([url.rstrip("/") for url in urls])
        self._context = context
        self._headers = headers
        self._sockets: Any = None  # an aiohttp.ClientSession, made at the first websocket()
        self._calls: Any = None  # an aiohttp.ClientSession, made at the first call
        # Answers from an auth that could serve (anything but 503), counted, and the
        # address of the latest: a watch on an auth that is behind its store moves to
        # one that serves (rpc/watcher.py).
        self._served = 0
        self._last_served = ""

    @property
    def base_url(self) -> str:
        """The address calls go to now (the last one that answered)."""
        return self._addresses.current()

    @property
    def base_urls(self) -> list[str]:
        return self._addresses.all

    def served_mark(self) -> int:
        """A mark to pass to `served_since` later."""
        return self._served

    def served_since(self, mark: int) -> str | None:
        """The address of the auth that last served a call or a watch, if one did since
        `mark`; None if none did (every answer since was a 503, or there was none)."""
        return self._last_served if self._served > mark else None

    def _answered_by(self, url: str, status: int) -> None:
        if status != UNAVAILABLE:
            self._served += 1
            self._last_served = url

    def _describe(self) -> str:
        urls = self._addresses.all
        return urls[0] if len(urls) == 1 else "auth (" + ", ".join(urls) + ")"

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        return (await self.call_status(method, path, json, params, headers))[0]

    async def call_status(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[Any, int]:
        """As `call`, with the answer's status (201 created, 200 found: a create that
        found what was asked for already there)."""
        response = await self.raw(method, path, json=json, params=params, headers=headers)
        return _decode(response), response.status_code

    async def raw(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,  # an iterable streams
    ) -> Answer:
        """One call, its answer read whole.

        A streamed body (`content` iterable) is read once, so it goes to the current
        address only; one that makes no progress for WRITE_STALL seconds (auth stopped
        reading it) fails the call."""
        import aiohttp  # here: cgsh imports this module and never calls through it

        streamed = isinstance(content, AsyncIterable)
        url = self._addresses.current()
        try:
            async with asyncio.timeout(None) as deadline:
                data: Any = content
                if streamed:
                    assert isinstance(content, AsyncIterable)
                    data = _paced(content, deadline)
                url, response = await self._open(
                    method,
                    path,
                    replayable=not streamed,
                    json=json,
                    params=params,
                    headers=headers,
                    data=data,
                )
                async with response:
                    return Answer(response.status, response.headers, await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._addresses.failed(url)
            raise _unreachable_over_aiohttp(url, exc) from exc

    @contextlib.asynccontextmanager
    async def raw_stream(
        self,
        method: str,
        path: str,
        params: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> AsyncIterator[StreamedAnswer]:
        """Like `raw`, but the body is left unread: iterate `aiter_bytes()` inside.

        However long the answer, only a chunk of it is in memory at a time (the proxy
        passes a recording through this way). A failure while reading the body becomes
        ConnectionProblem, as one before the answer does.
        """
        import aiohttp

        url, response = await self._open(method, path, params=params, headers=headers, data=content)
        try:
            yield StreamedAnswer(response)
        except aiohttp.ClientError as exc:
            raise _unreachable_over_aiohttp(url, exc) from exc
        finally:
            response.release()

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, params: Any = None, silence: float = 5.0
    ) -> AsyncIterator[AsyncIterator[str]]:
        """A long answer, line by line (the watch stream), from any auth that answers;
        `silence` seconds without a byte mean the stream is dead (the watch pings)."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=silence)
        url, response = await self._open(method, path, params=params, timeout=timeout)
        try:
            if response.status >= 400:
                _raise_for(Answer(response.status, response.headers, await response.read()))
            yield _lines(response)
        except aiohttp.ClientError as exc:
            self._addresses.failed(url)
            raise _unreachable_over_aiohttp(url, exc) from exc
        finally:
            response.release()

    async def _open(self, method: str, path: str, replayable: bool = True, **request: Any) -> Any:
        """(address, aiohttp answer with its body unread: release it) from the current
        address, or the next ones while they cannot be reached (nothing was sent) or
        cannot serve (503: an auth cut off from its store; the last one's 503 is the
        answer). A 503'd call goes on only if it is a read or auth says it wrote nothing
        (`_may_resend`); else its 503 is the answer, and the next call goes to the next
        auth. A request that is not `replayable` goes to the current address only."""
        import aiohttp

        session = self._call_session()
        request["params"] = _query(request.get("params"))
        addresses = self._addresses.in_order()
        tried = addresses if replayable else addresses[:1]
        last: Exception | None = None
        for n, url in enumerate(tried, start=1):
            try:
                response = await session.request(method, url + path, **request)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._addresses.failed(url)  # nothing was sent: the next may have it
                last = exc
                continue
            except (aiohttp.ClientError, OSError) as exc:
                self._addresses.failed(url)
                raise _unreachable_over_aiohttp(url, exc) from exc
            if response.status == UNAVAILABLE and n < len(tried):
                self._addresses.failed(url)  # the next call goes on to the next auth
                if _may_resend(method, response.headers):
                    response.release()
                    continue
                # It may have written part of the call: the caller hears the 503.
                return url, response
            self._addresses.worked(url)
            self._answered_by(url, response.status)
            return url, response
        assert last is not None
        raise _unreachable_over_aiohttp(self._describe(), last) from last

    def _call_session(self) -> Any:
        """The aiohttp session of calls and answer streams, made at the first call."""
        import aiohttp

        if self._calls is None:
            self._calls = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._context,
                    limit=0,
                    limit_per_host=MAX_CONNECTIONS,
                    keepalive_timeout=KEEPALIVE_EXPIRY,
                ),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=CONNECT_TIMEOUT,  # the wait for a pooled connection included
                    sock_read=READ_TIMEOUT,
                ),
            )
        return self._calls

    @contextlib.asynccontextmanager
    async def websocket(
        self, path: str, params: dict[str, str], max_message: int
    ) -> AsyncIterator[Any]:
        """A WebSocket to `path` on the first auth that takes it (the watch that also
        carries heartbeats: auth/watch_channel.py), as an aiohttp ClientWebSocketResponse.

        An auth that cannot be reached is passed over for the next, as for calls; one
        that answers without a socket raises: NotASocket for a plain answer (an auth
        that does not know the socket form), its refusal otherwise.
        """
        import aiohttp  # here: cgsh imports this module and never opens a socket

        if self._sockets is None:
            self._sockets = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context, limit=0),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
            )
        last: Exception | None = None
        addresses = self._addresses.in_order()
        for n, url in enumerate(addresses, start=1):
            try:
                socket = await self._sockets.ws_connect(
                    url + path,
                    params=params,
                    autoping=True,
                    max_msg_size=max_message,
                    # Closing waits this long for auth's close frame: a silent auth is
                    # left for the next one soon (aiohttp's default is 10 s).
                    timeout=aiohttp.ClientWSTimeout(ws_close=SOCKET_CLOSE_SECONDS),
                )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == UNAVAILABLE and n < len(addresses):
                    self._addresses.failed(url)  # cut off from its store: the next may serve
                    last = exc
                    continue
                self._addresses.worked(url)  # it answered: the answer is the news
                if exc.status < 400:
                    raise NotASocket(f"{url} answered {exc.status}, not a socket") from exc
                raise from_json(exc.status, {}) from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._addresses.failed(url)
                last = exc
                continue
            self._addresses.worked(url)
            self._answered_by(url, 101)  # switched protocols: it serves
            try:
                yield socket
            finally:
                await socket.close()
            return
        assert last is not None  # every address was tried, and each failed
        raise ConnectionProblem(f"cannot reach {self._describe()}: {what_broke(last)}")

    async def close(self) -> None:
        if self._calls is not None:
            await self._calls.close()
        if self._sockets is not None:
            await self._sockets.close()


def _may_resend(method: str, headers: Any) -> bool:
    """Whether a call an auth answered 503 may go to the next one: a read, or a call
    that auth says wrote nothing (backend/write_marks.py)."""
    return method.upper() in _READS or headers.get(NOT_APPLIED_HEADER) == "1"
