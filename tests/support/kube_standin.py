"""A Kubernetes API-server STAND-IN for tests and benchmarks (no real one installs here).

It serves the small part of the API that kubectl needs for the tests, over TLS:

    /version /api /apis /api/v1                 discovery (legacy, not aggregated)
    /api/v1/namespaces, /api/v1/nodes           lists (as Table when kubectl asks for one)
    /api/v1/[namespaces/NS/]pods[?watch=1]      list and watch (JSON lines, chunked)
    /api/v1/namespaces/NS/pods/NAME             get
    .../pods/NAME/log[?follow=true]             logs, followed as lines are appended
    .../pods/NAME/exec|attach                   WebSocket v5/v4 channels; the command runs
                                                here as a local process (with a pty for -t);
                                                or SPDY/3.1 (v4, no terminal) if asked

Callers authenticate with a bearer token. The token's owner may impersonate
(`Impersonate-User`, `Impersonate-Group`); the effective user and groups are then checked
against a small RBAC table (`Grant`). Every request's headers are recorded in `requests`
so tests can see what reached the API server. Nothing in src/ knows about this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import pty
import ssl
import struct
import tempfile
import termios
import threading
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ADMIN_TOKEN = "standin-admin-token"
WHO = web.RequestKey("who", set)
USER = web.RequestKey("user", str)


@dataclass(frozen=True)
class Grant:
    """Subjects (users, groups) allowed `verbs` on `resources` in `namespaces` ("*": all)."""

    subjects: tuple[str, ...]  # "user:alice", "group:viewers"
    verbs: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ("*",)
    namespaces: tuple[str, ...] = ("*",)

    def allows(self, who: set[str], verb: str, resource: str, namespace: str) -> bool:
        return (
            bool(who & set(self.subjects))
            and _any(self.verbs, verb)
            and _any(self.resources, resource)
            and _any(self.namespaces, namespace or "*")
        )


def _any(values: tuple[str, ...], value: str) -> bool:
    return "*" in values or value in values


@dataclass
class Pod:
    name: str
    namespace: str
    log: list[str] = field(default_factory=list)
    log_file: Path | None = None  # a large log, streamed from disk

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": f"uid-{self.namespace}-{self.name}",
                "resourceVersion": "1",
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running"},
        }


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, list[str]]
    status: int = 0


class KubeStandin:
    """Runs in a thread with its own loop: `start()`, then `url`, `ca_pem`, `kubeconfig()`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.grants: list[Grant] = [Grant(("user:standin-admin",))]
        self.namespaces = ["default", "dev", "prod"]
        self.nodes = ["kube-node-1", "kube-node-2"]
        self.pods: dict[tuple[str, str], Pod] = {}
        for ns, name in (("dev", "web"), ("dev", "db"), ("prod", "api"), ("default", "shell")):
            self.pods[(ns, name)] = Pod(name, ns, log=[f"{name} line {i}" for i in range(3)])
        self.requests: list[Seen] = []
        self.exec_processes = 0
        self.port_forwards = 0
        # Refuse exec's WebSocket upgrade, as an API server before 1.30 does: kubectl
        # then falls back to SPDY/3.1 (spdy_execs counts those served).
        self.exec_over_spdy = False
        self.spdy_execs = 0
        self.open_watches = 0  # watches and followed logs still being served
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        # Every connection that carried a request, to abort what is left at stop.
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._log_changed: asyncio.Condition | None = None
        self.port = 0
        self.ca_pem, cert_pem, key_pem = _tls_material()
        self._cert = workdir / "standin.crt"
        self._key = workdir / "standin.key"
        self._cert.write_text(cert_pem)
        self._key.write_text(key_pem)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        failed: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failed.append(exc)
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=main, name="kube-standin", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the kube stand-in did not start"
        if failed:
            raise RuntimeError("the kube stand-in did not start") from failed[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _serve(self) -> None:
        self._log_changed = asyncio.Condition()
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_route("*", "/{tail:.*}", self._route)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self._cert), str(self._key))
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # A TLS connection whose peer never answers close_notify (a client's idle pooled
        # connection that nobody reads) would wait out asyncio's 30 s SSL shutdown after
        # this loop is gone, and leak its socket: abort what is left.
        for transport in list(self._transports):
            transport.abort()  # type: ignore[attr-defined]
        await asyncio.sleep(0)

    def kubeconfig(self, path: Path, token: str = ADMIN_TOKEN, context: str = "standin") -> Path:
        """A kubeconfig for this stand-in (what an admin gives the kube service)."""
        ca = self.workdir / "standin-ca.crt"
        ca.write_text(self.ca_pem)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": context, "cluster": {"server": self.url, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": f"{context}-user", "user": {"token": token}}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": f"{context}-user"}}
            ],
            "current-context": context,
        }
        path.write_text(json.dumps(config))
        return path

    def append_log(self, namespace: str, pod: str, line: str) -> None:
        async def append() -> None:
            self.pods[(namespace, pod)].log.append(line)
            assert self._log_changed is not None
            async with self._log_changed:
                self._log_changed.notify_all()

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(append(), self._loop).result(5)

    def seen(self, path_part: str) -> list[Seen]:
        return [s for s in list(self.requests) if path_part in s.path]

    # ---- authentication, impersonation, RBAC -------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        headers: dict[str, list[str]] = {}
        for key, value in request.headers.items():
            headers.setdefault(key.lower(), []).append(value)
        seen = Seen(request.method, request.path_qs, headers)
        self.requests.append(seen)
        if request.transport is not None:
            self._transports.add(request.transport)
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {ADMIN_TOKEN}":
            seen.status = 401
            return _status(401, "Unauthorized", "Unauthorized")
        user = request.headers.get("Impersonate-User", "standin-admin")
        groups = request.headers.getall("Impersonate-Group", [])
        request[WHO] = {f"user:{user}", *(f"group:{g}" for g in groups)}
        request[USER] = user
        response: web.StreamResponse = await handler(request)
        seen.status = response.status
        return response

    def _allowed(self, request: web.Request, verb: str, resource: str, namespace: str) -> bool:
        who: set[str] = request[WHO]
        return any(g.allows(who, verb, resource, namespace) for g in self.grants)

    # ---- routes ------------------------------------------------------------------

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return web.json_response({"major": "1", "minor": "37", "gitVersion": "v1.37.0"})
        if path == "/api":
            return web.json_response(
                {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            )
        if path == "/apis":
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            return web.json_response(_resource_list())
        if parts[:2] != ["api", "v1"]:
            return _status(404, "NotFound", f"the server could not find {path}")
        rest = parts[2:]
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return _status(404, "NotFound", "not found")
        resource, name, sub = rest[0], (rest[1] if len(rest) > 1 else ""), rest[2:]
        if rest == ["namespaces"] or (namespace and not rest):
            resource = "namespaces"
        if sub:
            return await self._subresource(request, namespace, name, sub[0])
        verb = "get" if name else ("watch" if _is_watch(request) else "list")
        if not self._allowed(request, verb, resource, namespace):
            return _forbidden(request[USER], verb, resource, namespace)
        if resource == "pods":
            if name:
                pod = self.pods.get((namespace, name))
                if pod is None:
                    return _status(404, "NotFound", f'pods "{name}" not found')
                return web.json_response(pod.to_dict())
            pods = [
                p.to_dict() for p in self.pods.values() if not namespace or p.namespace == namespace
            ]
            if verb == "watch":
                return await self._watch(request, pods)
            return _list(request, "PodList", pods)
        if resource == "nodes":
            items = [_meta_object("Node", n) for n in self.nodes]
            return _list(request, "NodeList", items)
        if resource == "namespaces":
            items = [_meta_object("Namespace", n) for n in self.namespaces]
            return _list(request, "NamespaceList", items)
        return _status(404, "NotFound", f"the server could not find {resource}")

    async def _watch(self, request: web.Request, items: list[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        table = _wants_table(request)
        self.open_watches += 1
        try:
            return await self._hold_watch(request, response, items, table)
        finally:
            self.open_watches -= 1

    async def _hold_watch(
        self,
        request: web.Request,
        response: web.StreamResponse,
        items: list[dict[str, Any]],
        table: bool,
    ) -> web.StreamResponse:
        for item in items:
            obj = _table([item]) if table else item
            await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
        # Then hold the watch open until the client leaves (no changes in the stand-in).
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                await asyncio.sleep(0.5)
                if request.transport is None or request.transport.is_closing():
                    break
        return response

    async def _subresource(
        self, request: web.Request, namespace: str, name: str, sub: str
    ) -> web.StreamResponse:
        resource = f"pods/{sub}"
        verb = "create" if sub in ("exec", "attach", "portforward") else "get"
        if not self._allowed(request, verb, resource, namespace):
            return _forbidden(request[USER], verb, resource, namespace)
        pod = self.pods.get((namespace, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if sub == "log":
            return await self._logs(request, pod)
        if sub in ("exec", "attach"):
            return await self._exec(request, pod, sub)
        if sub == "portforward":
            return await self._portforward(request)
        return _status(404, "NotFound", f"no subresource {sub}")

    async def _portforward(self, request: web.Request) -> web.StreamResponse:
        """kubectl port-forward over WebSocket (`SPDY/3.1+portforward.k8s.io`: SPDY frames
        tunnelled in binary messages). Every forwarded port of every pod is an echo
        server here. With `?ports=0` the WebSocket itself echoes instead (tests that hold
        the upgrade open without speaking SPDY)."""
        ws = web.WebSocketResponse(protocols=("SPDY/3.1+portforward.k8s.io",), compress=False)
        if not ws.can_prepare(request).ok:
            return _status(400, "BadRequest", "port-forward needs a WebSocket upgrade here")
        await ws.prepare(request)
        self.port_forwards += 1
        if request.query.get("ports") == "0":
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            return ws
        session = _SpdyEcho(ws)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await session.feed(msg.data)
        return ws

    async def _logs(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if pod.log_file is not None:
            with pod.log_file.open("rb") as f:
                while chunk := f.read(256 * 1024):
                    await response.write(chunk)
        sent = 0
        follow = request.query.get("follow") == "true"
        assert self._log_changed is not None
        while True:
            while sent < len(pod.log):
                await response.write(pod.log[sent].encode() + b"\n")
                sent += 1
            if not follow:
                break
            async with self._log_changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._log_changed.wait(), 0.5)
            if request.transport is None or request.transport.is_closing():
                break
        await response.write_eof()
        return response

    async def _exec(self, request: web.Request, pod: Pod, sub: str) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "spdy/3.1" and request.method == "POST":
            return await self._exec_spdy(request, sub)
        if self.exec_over_spdy:
            return _status(400, "BadRequest", "this stand-in speaks SPDY for exec now")
        ws = web.WebSocketResponse(
            protocols=("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"),
            max_msg_size=0,
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            return _status(400, "BadRequest", "exec needs a WebSocket upgrade in this stand-in")
        await ws.prepare(request)
        command = request.query.getall("command", []) if sub == "exec" else ["/bin/sh"]
        tty = request.query.get("tty") == "true"
        want_stdin = request.query.get("stdin") == "true"
        self.exec_processes += 1
        await _run_exec(ws, command, tty, want_stdin, self.workdir)
        return ws

    async def _exec_spdy(self, request: web.Request, sub: str) -> web.StreamResponse:
        """exec over SPDY/3.1, remote command protocol v4, no terminal. aiohttp does not
        treat a SPDY upgrade as one, so the connection is taken over by hand: 101
        written on the transport, every later byte fed to _SpdyExec."""
        transport = request.transport
        assert transport is not None
        command = request.query.getall("command", []) if sub == "exec" else ["/bin/sh"]
        if request.query.get("tty") == "true":
            return _status(400, "BadRequest", "SPDY exec here has no terminal")
        order = ["error"]
        order += [n for n in ("stdin", "stdout", "stderr") if request.query.get(n) == "true"]
        session = _SpdyExec(transport, order)
        request.protocol.keep_alive(False)
        request.protocol.set_parser(session)  # type: ignore[arg-type]
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        )
        self.spdy_execs += 1
        try:
            await asyncio.wait_for(session.ready.wait(), 10)
            await session.run(command, self.workdir)
            with contextlib.suppress(TimeoutError):  # kubectl hangs up once it has all
                await asyncio.wait_for(session.gone.wait(), 5)
        finally:
            transport.close()
        return web.Response()  # written nowhere: the transport is closed


async def _run_exec(
    ws: web.WebSocketResponse, command: list[str], tty: bool, want_stdin: bool, cwd: Path
) -> None:
    loop = asyncio.get_running_loop()
    master = -1
    if tty:
        master, slave = pty.openpty()
        process = await asyncio.create_subprocess_exec(
            *command, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, start_new_session=True,
            env={"PATH": os.environ["PATH"], "TERM": "xterm", "PS1": "$ "},
        )  # fmt: skip
        os.close(slave)
        readers = [_fd_reader(master, 1)]
    else:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=cwd,
            stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        readers = [_stream_reader(process.stdout, 1), _stream_reader(process.stderr, 2)]

    async def pump(reader: Any) -> None:
        async for channel, chunk in reader:
            await ws.send_bytes(bytes([channel]) + chunk)

    async def read_client() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, data = msg.data[0], msg.data[1:]
            if channel == 0:
                if tty:
                    await loop.run_in_executor(None, os.write, master, data)
                elif process.stdin is not None:
                    process.stdin.write(data)
                    await process.stdin.drain()
            elif channel == 4 and tty:
                size = json.loads(data)
                winsize = struct.pack("HHHH", size["Height"], size["Width"], 0, 0)
                fcntl.ioctl(master, termios.TIOCSWINSZ, winsize)
            elif channel == 255 and data[:1] == b"\x00" and process.stdin is not None:
                process.stdin.close()
        # The client went away: end the process.
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    client = asyncio.create_task(read_client())
    try:
        await asyncio.gather(*(pump(r) for r in readers))
        code = await process.wait()
        if code == 0:
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        with contextlib.suppress(ConnectionError):
            await ws.send_bytes(b"\x03" + json.dumps(status).encode())
            await ws.close()
    except ConnectionError:
        pass
    finally:
        client.cancel()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if master >= 0:
            os.close(master)


async def _fd_reader(fd: int, channel: int) -> Any:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
        queue.put_nowait(data)

    loop.add_reader(fd, readable)
    try:
        while data := await queue.get():
            yield channel, data
    finally:
        loop.remove_reader(fd)


async def _stream_reader(stream: asyncio.StreamReader, channel: int) -> Any:
    while data := await stream.read(65536):
        yield channel, data


class _SpdyEcho:
    """The server side of SPDY/3.1 as kubectl's port-forward uses it, echoing data.

    kubectl opens two streams per forwarded connection, an error stream then a data
    stream (their headers say which; this stand-in goes by the order, so it never has
    to inflate header blocks), and waits for a SYN_REPLY on each. DATA on a data stream
    comes back on it; a FIN is answered with a FIN. PINGs are answered; SETTINGS and
    WINDOW_UPDATE are ignored (kubectl's SPDY library does not enforce windows).
    """

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._buffer = b""
        self._seen = 0  # streams opened so far: even count -> next is an error stream
        self._error_stream = 0  # the last error stream opened
        self._data_streams: dict[int, int] = {}  # data stream -> its error stream
        # One zlib stream for every header block this side sends (SPDY/3 §2.6.10.1).
        self._deflate = zlib.compressobj()

    async def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 8:
            length = int.from_bytes(self._buffer[5:8], "big")
            if len(self._buffer) < 8 + length:
                return
            frame, self._buffer = self._buffer[: 8 + length], self._buffer[8 + length :]
            await self._frame(frame)

    async def _frame(self, frame: bytes) -> None:
        flags, payload = frame[4], frame[8:]
        if not frame[0] & 0x80:  # a DATA frame
            stream = int.from_bytes(frame[0:4], "big") & 0x7FFFFFFF
            if stream in self._data_streams:
                fin = bool(flags & 0x01)
                await self._send(_spdy_data(stream, payload, fin=fin))
                if fin:  # kubectl waits for its error stream to end too
                    await self._send(_spdy_data(self._data_streams.pop(stream), b"", fin=True))
            return
        kind = int.from_bytes(frame[2:4], "big")
        if kind == 1:  # SYN_STREAM
            stream = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
            if self._seen % 2 == 1:
                self._data_streams[stream] = self._error_stream
            else:
                self._error_stream = stream
            self._seen += 1
            block = self._deflate.compress(b"\x00\x00\x00\x00")  # no headers
            block += self._deflate.flush(zlib.Z_SYNC_FLUSH)
            await self._send(_spdy_control(2, 0, stream.to_bytes(4, "big") + block))
        elif kind == 6:  # PING: answered with its id
            await self._send(_spdy_control(6, 0, payload))

    async def _send(self, frame: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await self._ws.send_bytes(frame)


class _SpdyExec:
    """The server side of a SPDY/3.1 exec (what a kubelet serves an old kubectl).

    kubectl opens one stream per channel in a fixed order (error, then stdin, stdout,
    stderr as asked), so, as _SpdyEcho, this goes by the order and never inflates header
    blocks. Each stream gets a SYN_REPLY; DATA on stdin goes to the process; output goes
    out as DATA on its stream, then FIN; the v4 status JSON ends the error stream.
    """

    def __init__(self, transport: asyncio.BaseTransport, order: list[str]) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._transport = transport
        self._order = order
        self.streams: dict[str, int] = {}
        self._buffer = b""
        self._deflate = zlib.compressobj()
        self.ready = asyncio.Event()
        self.gone = asyncio.Event()
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue()

    # aiohttp's payload parser interface (web_protocol.set_parser)
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._buffer += data
        while len(self._buffer) >= 8:
            length = int.from_bytes(self._buffer[5:8], "big")
            if len(self._buffer) < 8 + length:
                break
            frame, self._buffer = self._buffer[: 8 + length], self._buffer[8 + length :]
            self._frame(frame)
        return False, b""

    def feed_eof(self) -> None:
        self.stdin.put_nowait(None)
        self.gone.set()

    def _frame(self, frame: bytes) -> None:
        flags, payload = frame[4], frame[8:]
        if not frame[0] & 0x80:  # DATA: only stdin carries any from kubectl
            stream = int.from_bytes(frame[0:4], "big") & 0x7FFFFFFF
            if stream == self.streams.get("stdin"):
                if payload:
                    self.stdin.put_nowait(payload)
                if flags & 0x01:
                    self.stdin.put_nowait(None)
            return
        kind = int.from_bytes(frame[2:4], "big")
        if kind == 1 and len(self.streams) < len(self._order):  # SYN_STREAM
            stream = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
            self.streams[self._order[len(self.streams)]] = stream
            block = self._deflate.compress(b"\x00\x00\x00\x00")  # no headers
            block += self._deflate.flush(zlib.Z_SYNC_FLUSH)
            self._send(_spdy_control(2, 0, stream.to_bytes(4, "big") + block))
            if len(self.streams) == len(self._order):
                self.ready.set()
        elif kind == 6:  # PING
            self._send(_spdy_control(6, 0, payload))

    def _send(self, frame: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(frame)

    async def run(self, command: list[str], cwd: Path) -> None:
        pipe = asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, stdout=pipe, stderr=pipe,
            stdin=pipe if "stdin" in self.streams else asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None

        async def pump(reader: asyncio.StreamReader, name: str) -> None:
            async for _, chunk in _stream_reader(reader, 0):
                if name in self.streams:
                    self._send(_spdy_data(self.streams[name], chunk, fin=False))

        async def feed_stdin() -> None:
            assert process.stdin is not None
            while (chunk := await self.stdin.get()) is not None:
                process.stdin.write(chunk)
                await process.stdin.drain()
            process.stdin.close()

        feeder = asyncio.create_task(feed_stdin()) if process.stdin is not None else None
        try:
            await asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
            code = await process.wait()
        finally:
            if feeder is not None:
                feeder.cancel()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for name in ("stdout", "stderr"):
            if name in self.streams:
                self._send(_spdy_data(self.streams[name], b"", fin=True))
        status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        if code != 0:
            status = {
                "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: {code}",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }  # fmt: skip
        self._send(_spdy_data(self.streams["error"], json.dumps(status).encode(), fin=True))


def _spdy_control(kind: int, flags: int, payload: bytes) -> bytes:
    return (
        (0x8003).to_bytes(2, "big")
        + kind.to_bytes(2, "big")
        + bytes([flags])
        + len(payload).to_bytes(3, "big")
        + payload
    )


def _spdy_data(stream: int, payload: bytes, fin: bool) -> bytes:
    return (
        stream.to_bytes(4, "big")
        + bytes([1 if fin else 0])
        + len(payload).to_bytes(3, "big")
        + payload
    )


# ---- API objects -----------------------------------------------------------------


def _resource_list() -> dict[str, Any]:
    def res(name: str, kind: str, namespaced: bool, verbs: list[str]) -> dict[str, Any]:
        return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                "verbs": verbs}  # fmt: skip

    rw = ["get", "list", "watch"]
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            res("namespaces", "Namespace", False, rw),
            res("nodes", "Node", False, rw),
            res("pods", "Pod", True, rw),
            res("pods/exec", "PodExecOptions", True, ["create", "get"]),
            res("pods/attach", "PodAttachOptions", True, ["create", "get"]),
            res("pods/log", "Pod", True, ["get"]),
            res("pods/portforward", "PodPortForwardOptions", True, ["create", "get"]),
        ],
    }


def _meta_object(kind: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Active"} if kind == "Namespace" else {},
    }  # fmt: skip


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _is_watch(request: web.Request) -> bool:
    return request.query.get("watch") in ("true", "1")


def _table(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "1"},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0},
            {"name": "Status", "type": "string", "format": "", "description": "", "priority": 0},
        ],
        "rows": [
            {
                "cells": [item["metadata"]["name"], item.get("status", {}).get("phase", "Ready")],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": item["metadata"],
                },
            }
            for item in items
        ],
    }


def _list(request: web.Request, kind: str, items: list[dict[str, Any]]) -> web.Response:
    if _wants_table(request):
        return web.json_response(_table(items))
    return web.json_response(
        {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
    )


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    return web.json_response(body, status=code)


def _forbidden(user: str, verb: str, resource: str, namespace: str) -> web.Response:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return _status(
        403, "Forbidden",
        f'{resource} is forbidden: User "{user}" cannot {verb} resource "{resource}"{where}',
    )  # fmt: skip


def _tls_material() -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube stand-in CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem


@contextlib.contextmanager
def running_standin(workdir: Path | None = None) -> Iterator[KubeStandin]:
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
        standin = KubeStandin(workdir or Path(tmp))
        standin.start()
        try:
            yield standin
        finally:
            standin.stop()
