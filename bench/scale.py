"""N nodes heartbeating to one real auth, on SQLite and on PostgreSQL; an auth restart.

    .venv/bin/python bench/scale.py [--nodes 10000] [--interval 30] [--seconds 60]
                                    [--workers 4] [--backends sqlite,postgres]
                                    [--watch 1.0] [--beats-over watch|call]
                                    [--auth-workers 1] [--no-pin]
                                    [--profile DIR] [--no-restart] [--baseline REV]

For each backend: a real `certgate start --roles auth,proxy` (one process) on loopback.
`--workers` load-generator processes (spawned, so their CPU is not the server's) each
join their share of the N nodes with a multi-use node token each (`POST /v1/join`, so every
node has its own key and certificates, and auth holds every name), then heartbeat as
`certgate start --roles node` does (`POST /v1/nodes/heartbeat` over mTLS, every
`--interval` seconds ±10 %, retries after a failure with the node's full-jitter backoff).
A `--watch` share of the nodes (1.0: all, as every real node watches) also holds the
watch stream a real node holds (the request `ResourceView` sends for role, lock,
cert_authority, open for good, reconnected with its backoff), which is what auth
carries in production; none serve SSH. With `--beats-over watch` (a node's way now)
the watch is a WebSocket and the beats ride it: one connection per node; with `call`
the beats go as `POST /v1/nodes/heartbeat` on a second connection, as before. Auth
runs with its default `http_limits` (what an operator gets without tuning).

Auth's figure is auth's own: auth (with the proxy in its process, and PostgreSQL's
processes) is pinned to the first core, the load generators, this process and the
`cgsh` it runs to the other(s) (`--no-pin`: all share every core, the figure of earlier
rounds, where the generators' client halves of 20,000 TLS handshakes left auth a fifth
of a core). Both sides' CPU is printed: generators near their cores' worth mean the
figure may be theirs. Other jobs on the machine are not pinned; with the kernel's
autogroups (sessions share a core equally, whatever their nice) the benchmark runs in
a session of its own at group nice -10 (as root), or auth got a fifth of its core
while other sessions ran tests at nice 15.

Measured and printed next to the targets (nothing is asserted):
- heartbeats/s answered in the steady window, failures, heartbeat latency p50/p99;
- the auth process's CPU (core-seconds per second of the window) and peak RSS (VmHWM),
  its `--auth-workers` processes' added in;
- `cgsh ls` and `cgsh ls --format=json` p50/p99 over 10 runs each (the real commands,
  start-up included);
- an auth restart (SIGTERM, start again on the same store): seconds from auth ready
  again until every node had a heartbeat answered, and how the returns spread per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import procs
from bench.cli_startup import baseline_tree
from certgate.api.bundle import CertBundle
from certgate.api.codec import to_dict
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.daemon import event_loop
from certgate.errors import CertgateError, ConnectionProblem
from certgate.rpc.auth_client import CONNECT_TIMEOUT, READ_TIMEOUT, AsyncAuthClient
from certgate.rpc.failover import Backoff
from certgate.rpc.identity_files import IdentityFiles, new_key
from certgate.rpc.join import fetch_host_ca
from certgate.rpc.watcher import (
    READY_TIMEOUT,
    RECONNECT_BASE,
    RECONNECT_CAP,
    ping_seconds,
    silence_seconds,
)
from certgate.srv.host import WATCHED_KINDS
from certgate.transport import client_context
from tests.support.cluster import BIN, Cluster
from tests.support.cluster import run as run_command
from tests.support.postgres import running_postgres

TARGET_RSS_MIB = 1024
TARGET_LS_P50 = 1.0
TARGET_REREGISTER = 120.0
RESTART_READY_TIMEOUT = 300.0
DEFAULT_STRICT_GRACE = 30.0  # strict_lock_grace's default (daemon/config.py)
# The benchmark's scheduling group against other sessions' (bench/procs.own_autogroup).
AUTOGROUP_NICE = -10


# load generator (one process per --workers) ---------------------------------------------


async def _join(client: AsyncAuthClient, token: str, name: str) -> IdentityFiles:
    key_pem, public_key = new_key()
    data = await client.call(
        "POST",
        "/v1/join",
        json={
            "token": token,
            "role": "node",
            "public_key": public_key,
            "name": name,
            "principals": [name, "127.0.0.1"],
        },
    )
    return IdentityFiles(key_pem=key_pem, bundle=CertBundle.from_dict(data))


async def _connect(
    host: str, port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # The real node's connect timeout (rpc/auth_client.CONNECT_TIMEOUT): 30 s, TLS
    # handshake included.
    async with asyncio.timeout(CONNECT_TIMEOUT):
        return await asyncio.open_connection(host, port, ssl=context, server_hostname=host)


async def _head(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """An answer's status and its lower-cased header block."""
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower()


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


# What a failed connection raises in the lean clients below.
_BROKEN = (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, ValueError)


class BeatFailed(ConnectionProblem):
    def __init__(self, phase: str, exc: BaseException) -> None:
        super().__init__(f"heartbeat failed: {type(exc).__name__} {exc}")
        self.kind = f"{type(exc).__name__} ({phase})"


class BeatConnection:
    """One node's keep-alive mTLS connection to auth, speaking just enough HTTP/1.1 for
    `POST /v1/nodes/heartbeat`.

    The real node uses httpx; 10,000 of them in four Python processes on a loaded 2-core
    machine spent their CPU in httpx, and the heartbeat latency measured their own
    event-loop lag rather than auth (auth idled at 0.05 cores while beats timed out).
    The calls auth sees are the same: one mTLS connection per node, kept between beats,
    the same request line, headers and JSON body.
    """

    def __init__(self, auth: str, context: ssl.SSLContext, body: bytes) -> None:
        self._host, port = auth.rsplit(":", 1)
        self._port = int(port)
        self._context = context
        self._request = (
            f"POST /v1/nodes/heartbeat HTTP/1.1\r\nHost: {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def beat(self) -> None:
        phase = "connect"  # a new connection (TLS handshake included)
        try:
            if self._streams is None:
                self._streams = await _connect(self._host, self._port, self._context)
            else:
                phase = "kept"  # on the connection kept since the last beat
            # Then the node's 15 s for the answer.
            async with asyncio.timeout(READ_TIMEOUT):
                await self._beat(*self._streams)
        except _BROKEN as exc:
            self.close()
            raise BeatFailed(phase, exc) from None

    async def _beat(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self._request)
        status, head = await _head(reader)
        answer = await reader.readexactly(_length(head))
        if b"connection: close" in head:
            self.close()
        if status >= 300:
            raise ValueError(f"status {status}: {answer[:200]!r}")

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


class WatchConnection:
    """A node's watch stream (roles, locks, CAs) on its own mTLS connection, as the real
    node's `ResourceView` holds it: the same request (`GET /v1/watch?kinds=...&ping=5`
    with httpx's headers), dead after three missed pings, reconnected with the same
    full-jitter backoff. It reads the chunked answer and counts lines but decodes
    nothing, and checks silence once a second for all streams rather than with a timer
    per read: with `ResourceView` (httpx, pydantic) on 5,000 streams the generators ran
    out of CPU, and the figure was theirs, not auth's.
    """

    def __init__(self, auth: str, context: ssl.SSLContext) -> None:
        self._host, port = auth.rsplit(":", 1)
        self._port = int(port)
        self._context = context
        ping = ping_seconds(DEFAULT_STRICT_GRACE)  # as a node with the default grace asks
        self.silence = silence_seconds(ping)
        params = urlencode({"kinds": ",".join(WATCHED_KINDS), "ping": f"{ping:g}"})
        self._target = f"/v1/watch?{params}"
        self._request = (
            f"GET {self._target} HTTP/1.1\r\nHost: {auth}\r\nAccept: */*\r\n"
            "Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
            f"User-Agent: python-httpx/{httpx.__version__}\r\n\r\n"
        ).encode()
        self.connected = False  # a snapshot arrived on the current connection
        self.last_word = 0.0  # loop time auth last sent something (or the connect)
        self._writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def drop_if_silent(self, now: float) -> None:
        """Three missed pings: the stream is dead (`watch_sweeper` asks every few
        seconds, rather than a timer per read on thousands of streams)."""
        if self._writer is not None and now - self.last_word > self.silence:
            self._writer.close()

    async def _run(self) -> None:
        backoff = Backoff(base=RECONNECT_BASE, cap=RECONNECT_CAP)
        while True:
            try:
                await self._follow()
            except _BROKEN:
                pass
            if self.connected:
                backoff.reset()
            self.connected = False
            await asyncio.sleep(backoff.next())

    async def _follow(self) -> None:
        reader, self._writer = await _connect(self._host, self._port, self._context)
        self.last_word = asyncio.get_running_loop().time()
        try:
            self._writer.write(self._request)
            status, head = await _head(reader)
            if status != 200 or b"transfer-encoding: chunked" not in head:
                raise ValueError(f"watch answered {status}")
            # The snapshot, then pings and changes, as chunks; only their arrival counts.
            while await reader.read(65536):
                self.connected = True
                self.last_word = asyncio.get_running_loop().time()
            raise EOFError("the watch stream ended")
        finally:
            self._writer.close()
            self._writer = None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class SocketWatch(WatchConnection):
    """The same watch as a WebSocket that also carries the node's heartbeats, as a real
    node holds it since heartbeats ride the watch (auth/watch_channel.py): one
    connection per node. Lean like the two classes above, for the same reason: the
    upgrade request by hand and just the frames auth sends (binary, close; unmasked)
    and the beat the node sends (binary, masked, as a client must). With aiohttp's
    client on 10,000 nodes the generators' core saturated as auth restarted, their
    handshakes outlived auth's handshake_timeout and no watch came back: the figure
    was theirs. Reconnects and silence as for the plain stream.
    """

    def __init__(self, auth: str, context: ssl.SSLContext) -> None:
        super().__init__(auth, context)
        key = base64.b64encode(os.urandom(16)).decode()
        self._request = (
            f"GET {self._target} HTTP/1.1\r\nHost: {auth}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._asked: dict[int, asyncio.Future[bytes]] = {}
        self._next = 0
        self._up = asyncio.Event()  # set while connected

    async def up_within(self, seconds: float) -> bool:
        if not self.connected:
            try:
                async with asyncio.timeout(seconds):
                    await self._up.wait()
            except TimeoutError:
                return False
        return True

    async def beat(self, body: dict[str, Any]) -> None:
        """Send a beat up the socket and wait for its answer; BeatFailed otherwise."""
        if self._writer is None or not self.connected:
            raise BeatFailed("socket", ConnectionError("no watch socket"))
        self._next += 1
        ident = self._next
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._asked[ident] = answered
        try:
            self._writer.write(_client_frame(json.dumps({**body, "id": ident}).encode()))
            async with asyncio.timeout(READ_TIMEOUT):
                answer = await answered
        except _BROKEN as exc:
            raise BeatFailed("socket", exc) from None
        finally:
            self._asked.pop(ident, None)
        if b'"error"' in answer:
            raise BeatFailed("socket", ValueError(answer[:200].decode()))

    async def _follow(self) -> None:
        reader, self._writer = await _connect(self._host, self._port, self._context)
        self.last_word = asyncio.get_running_loop().time()
        try:
            self._writer.write(self._request)
            status, _ = await _head(reader)
            if status != 101:
                raise ValueError(f"watch answered {status}")
            while True:
                head = await reader.readexactly(2)
                size = head[1] & 0x7F
                if size == 126:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                elif size == 127:
                    size = int.from_bytes(await reader.readexactly(8), "big")
                data = await reader.readexactly(size)
                if head[0] & 0x0F != 0x2:  # not binary: a close (auth sends no others)
                    raise EOFError("the watch socket closed")
                self.connected = True
                self._up.set()
                self.last_word = asyncio.get_running_loop().time()
                if data.startswith(b'{"type": "answer"'):
                    waiting = self._asked.get(json.loads(data)["id"])
                    if waiting is not None and not waiting.done():
                        waiting.set_result(data)
        finally:
            self._writer.close()
            self._writer = None
            self.connected = False
            self._up.clear()
            for waiting in self._asked.values():
                if not waiting.done():
                    waiting.set_exception(EOFError("the watch socket ended"))


def _client_frame(payload: bytes) -> bytes:
    """One binary frame from a client: masked (RFC 6455 5.3), as auth requires."""
    mask = os.urandom(4)
    size = len(payload)
    head = (
        bytes([0x82, 0x80 | size]) if size < 126 else bytes([0x82, 0xFE]) + size.to_bytes(2, "big")
    )
    stretched = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stretched, "big")).to_bytes(
        size, "big"
    )
    return head + mask + masked


async def watch_sweeper(watches: list[WatchConnection | SocketWatch]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        now = loop.time()
        for watch in watches:
            watch.drop_if_silent(now)


class SimNode:
    def __init__(
        self,
        name: str,
        identity: IdentityFiles,
        auth: str,
        interval: float,
        watch: bool,
        beats_over: str,  # watch: the beats ride the watch socket; call: a second connection
    ) -> None:
        self.name = name
        context = identity.tls_context()
        # What a real node watches (node/agent.py): on the connection that also carries
        # its beats, or (`--beats-over call`, before) on a second one.
        self.view: WatchConnection | SocketWatch | None = None
        if watch:
            self.view = (
                SocketWatch(auth, context)
                if beats_over == "watch"
                else WatchConnection(auth, context)
            )
        self.interval = interval
        self.retry = Backoff(base=min(1.0, interval), cap=interval)
        self.body = {
            "node": to_dict(
                Node(
                    metadata=Metadata(name=name, labels={"env": "bench"}),
                    spec=NodeSpec(addr="127.0.0.1:3022", hostname=name),
                )
            ),
            "ttl_seconds": interval * 1.5,
        }
        self.beats = BeatConnection(auth, context, json.dumps(self.body).encode())

    async def beat(self) -> float:
        started = time.monotonic()
        # As SessionHost.beat: up the watch, waiting up to half an interval for it while
        # it is reconnected; as a call past that.
        if isinstance(self.view, SocketWatch) and await self.view.up_within(self.interval / 2):
            await self.view.beat({"type": "heartbeat", **self.body})
        else:
            await self.beats.beat()
        return time.monotonic() - started

    async def run(self, stats: dict[str, Any]) -> None:
        # As the node agent: the first beat somewhere in the first interval, then every
        # interval ±10 %; after a failure, a full-jitter retry sooner than that.
        delay = random.uniform(0, self.interval)
        if self.view is not None:
            await asyncio.sleep(delay)  # the watches open spread out too
            self.view.start()
            delay = 0
            if isinstance(self.view, SocketWatch):
                # A node beats once its view has its snapshot (SessionHost.start, then
                # serving): its first beat goes up the socket, not as a call on a
                # second connection. It waits as long as the node does (wait_ready).
                deadline = time.monotonic() + READY_TIMEOUT
                while not self.view.connected and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
        while True:
            await asyncio.sleep(delay)
            try:
                latency = await self.beat()
            except CertgateError as exc:
                stats["failed"] += 1
                stats["error"] = str(exc)
                kind = getattr(exc, "kind", type(exc).__name__)
                stats["kinds"][kind] = stats["kinds"].get(kind, 0) + 1
                stats["down"].add(self.name)
                delay = self.retry.next()
                continue
            self.retry.reset()
            stats["ok"] += 1
            stats["latency"].append(latency)
            now = time.time()
            if self.name in stats["down"]:
                stats["down"].discard(self.name)
                stats["returned"].append(now)
            if stats["mark"] and self.name not in stats["seen"]:
                stats["seen"][self.name] = now
            delay = self.interval * (0.9 + 0.2 * random.random())


def _worker(
    index: int,
    names: list[str],
    auth: str,
    token: str,
    interval: float,
    watch: float,
    beats_over: str,
    cpus: set[int] | None,
    pipe: Any,
) -> None:
    if cpus is not None:  # before any thread starts: they inherit it
        os.sched_setaffinity(0, cpus)

    async def main() -> None:
        ca_pem = await fetch_host_ca(auth, "")
        semaphore = asyncio.Semaphore(8)
        # Joins share this worker's connections (a join is not authenticated by a client
        # certificate): a TLS handshake per join cost both sides more than the join.
        joiner = AsyncAuthClient(f"https://{auth}", client_context([ca_pem]))

        async def join(name: str) -> tuple[str, IdentityFiles]:
            # A join that timed out on a busy auth may still have taken the name: a
            # retry joins under a new one.
            async with semaphore:
                for attempt in range(30):
                    tried = name if attempt == 0 else f"{name}-{attempt}"
                    try:
                        return tried, await _join(joiner, token, tried)
                    except CertgateError:
                        await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
                return f"{name}-last", await _join(joiner, token, f"{name}-last")

        joined = await asyncio.gather(*(join(name) for name in names))
        await joiner.close()
        watchers = round(len(names) * watch)
        nodes = [
            SimNode(n, i, auth, interval, watch=k < watchers, beats_over=beats_over)
            for k, (n, i) in enumerate(joined)
        ]
        stats: dict[str, Any] = {
            "ok": 0, "failed": 0, "latency": [], "down": set(), "returned": [],
            "mark": False, "seen": {}, "error": "", "kinds": {},
        }  # fmt: skip
        pipe.send("joined")
        tasks = [asyncio.create_task(node.run(stats)) for node in nodes]
        watches = [node.view for node in nodes if node.view is not None]
        tasks.append(asyncio.create_task(watch_sweeper(watches)))
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "stop":
                break
            if command == "mark":  # from now on, note each node's first answered beat
                # and only the returns that follow (the curve's origin is the first).
                stats.update(mark=True, seen={}, returned=[])
                continue
            # "report": what happened since the last report
            pipe.send(
                {
                    "ok": stats["ok"],
                    "failed": stats["failed"],
                    "latency": stats["latency"],
                    "down": len(stats["down"]),
                    "returned": stats["returned"],
                    "seen": list(stats["seen"].values()),
                    "error": stats["error"],
                    "kinds": stats["kinds"],
                    "watching": sum(1 for n in nodes if n.view is not None and n.view.connected),
                }
            )
            stats.update(ok=0, failed=0, latency=[], returned=[], kinds={})
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(n.view.close() for n in nodes if n.view is not None))
        for node in nodes:
            node.beats.close()

    # The loop a real node runs (uvloop unless CERTGATE_EVENT_LOOP says otherwise): its
    # TLS layer is C, where asyncio's is Python.
    event_loop.run(main())


# the auth side ---------------------------------------------------------------------------


def _family(pid: int) -> list[int]:
    """Auth's process and its children (the `--auth-workers` processes)."""
    return [pid, *procs.children().get(pid, [])]


def _proc_cpu(pid: int) -> float:
    """CPU seconds of auth and its workers so far (a worker restarted loses its own)."""
    return procs.own_cpu_seconds(_family(pid))


def _runqueue_wait(pid: int) -> float:
    """Seconds auth's threads (workers' too) spent runnable but not running."""
    total = 0
    for one in _family(pid):
        for task in Path(f"/proc/{one}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return total / 1e9


def _rss_mib(pid: int, field: str = "VmHWM") -> float:
    """Peak RSS (VmHWM; VmRSS: now) of auth, plus its workers' (each its own process)."""
    total = 0
    for one in _family(pid):
        try:
            lines = Path(f"/proc/{one}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith(f"{field}:"))
    return total / 1024


def _open_connections(pid: int) -> int:
    return sum(
        1
        for one in _family(pid)
        for fd in Path(f"/proc/{one}/fd").glob("*")
        if "socket" in _readlink(fd)
    )


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SLICE_SECONDS = 10.0


def _reports(pipes: list[Any]) -> dict[str, Any]:
    for pipe in pipes:
        pipe.send("report")
    return _merged([pipe.recv() for pipe in pipes])


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "ok": 0, "failed": 0, "latency": [], "down": 0, "returned": [], "seen": [], "error": "",
        "watching": 0, "kinds": {},
    }  # fmt: skip
    for part in parts:
        merged["ok"] += part["ok"]
        merged["failed"] += part["failed"]
        merged["down"] += part["down"]
        merged["watching"] += part["watching"]
        merged["latency"] += part["latency"]
        merged["returned"] += part["returned"]
        merged["seen"] += part["seen"]
        merged["error"] = merged["error"] or part["error"]
        for kind, count in part["kinds"].items():
            merged["kinds"][kind] = merged["kinds"].get(kind, 0) + count
    return merged


def _commits(conninfo: str) -> int:
    """Transactions committed in the store's database so far (0 without PostgreSQL)."""
    if not conninfo:
        return 0
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _kinds(report: dict[str, Any]) -> str:
    """Failures by error and where (a new connection or the kept one), most first."""
    ordered = sorted(report["kinds"].items(), key=lambda item: -item[1])
    return ", ".join(f"{kind} {count}" for kind, count in ordered)


def _generators_cpu(workers: list[multiprocessing.process.BaseProcess]) -> float:
    return procs.own_cpu_seconds(w.pid for w in workers if w.pid is not None)


def _sides(
    auth_cpu: float, generators_cpu: float, client_cpus: set[int] | None, pinned: str
) -> str:
    """Both sides' CPU, so a reader sees which one ran out."""
    cores = len(client_cpus) if client_cpus is not None else len(procs.ALL)
    saturated = " (saturated: the figure may be theirs)" if generators_cpu > 0.9 * cores else ""
    return (
        f"auth{pinned} {auth_cpu:.2f} cores; load generators {generators_cpu:.2f} of "
        f"{cores} cores{saturated}"
    )


PROFILE_RATE = 200  # samples per second
PROFILE_SECONDS = 20  # at most, from the start of the steady window
LS_PROFILE_SECONDS = 10  # from the first `cgsh ls` on
CLIENT_PROFILE_RATE = 500  # samples per second of one `cgsh ls`


def _start_profile(directory: Path, pid: int, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy on auth (the proxy in its process, its workers) during the steady window.

    py-spy runs where this process runs (the generators' cores when pinned): its CPU is
    theirs, not auth's. Idle threads are left out, so samples are CPU-ish."""
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(procs.py_spy_path()),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(min(seconds, PROFILE_SECONDS))),  # whole seconds
            "--rate",
            str(PROFILE_RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--subprocesses",
            "--output",
            str(directory / "auth.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _summarize_profile(
    directory: Path, label: str, seconds: float, top: int = 40, shown: int = 16
) -> None:
    """DIR/auth-LABEL-top.txt: auth's top functions (in the steady window: LABEL is the
    backend; during `cgsh ls`: BACKEND-ls), as ms of CPU per second of the profile
    (inclusive and self), and its raw stacks kept beside it."""
    raw = directory / "auth.txt"
    if not raw.exists():
        print(f"[{label}] profile: py-spy wrote nothing (is it installed in .venv?)")
        return
    kept = raw.rename(directory / f"auth-{label}-{int(time.time())}.txt")
    inclusive, own, total = procs.tally_stacks(kept)
    per = 1000 / PROFILE_RATE / seconds  # ms per second of the profile, per sample
    lines = [
        f"auth ({label}): {total} samples at {PROFILE_RATE}/s over {seconds:g} s "
        f"({kept.name}); ms of CPU per second (1000: all of a core)"
    ]
    lines += procs.top_lines(inclusive, own, per, top, decimals=1)
    (directory / f"auth-{label}-top.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:shown]), flush=True)


def _profile_client(directory: Path, backend: str, home: Path, top: int = 40) -> None:
    """DIR/cgsh-ls-BACKEND-top.txt: one `cgsh ls` under py-spy, waits
    included (`--idle`), in ms of its wall time: where a listing's time goes on the
    client's side (start-up, TLS, waiting for the answer, decoding, printing)."""
    raw = directory / f"cgsh-ls-{backend}.txt"
    started = time.monotonic()
    subprocess.run(
        [
            str(procs.py_spy_path()),
            "record",
            "--rate",
            str(CLIENT_PROFILE_RATE),
            "--idle",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
            str(Path(sys.executable).parent / "cgsh"),
            "ls",
        ],
        env={**os.environ, "CERTGATE_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    wall = time.monotonic() - started
    if not raw.exists():
        return
    inclusive, own, total = procs.tally_stacks(raw)
    lines = [f"cgsh ls ({backend}) under py-spy: {wall:.2f} s, {total} samples; ms of wall time"]
    lines += procs.top_lines(inclusive, own, 1000 / CLIENT_PROFILE_RATE, top, decimals=1)
    (directory / f"cgsh-ls-{backend}-top.txt").write_text("\n".join(lines) + "\n")
    print(f"[{backend}] " + lines[0], flush=True)


class BehindSampler:
    """Auth's `certgate_store_watch_behind_seconds`, read from /metrics once a second in
    a thread: whether its watch of the store fell behind under the load (over about 3 s
    it counts as behind: user calls wait for it to catch up, pings say so to the nodes;
    at 10 s /readyz says not ready). Always 0 on SQLite."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._stop = threading.Event()
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._run, name="behind-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            status, text = self._cluster.diag("/metrics")
            if status != 200:
                continue  # a busy auth answers late: the sample is skipped, not zero
            for line in text.splitlines():
                if line.startswith("certgate_store_watch_behind_seconds "):
                    self.samples.append(float(line.split()[-1]))

    def report(self) -> str:
        self._stop.set()
        self._thread.join(timeout=5)
        behind = [x for x in self.samples if x > 0]
        return f"store watch behind in {len(behind)} of {len(self.samples)} samples" + (
            f" (at most {max(behind):.1f} s)" if behind else ""
        )


def run_backend(
    backend: str, args: argparse.Namespace, workdir: Path, conninfo: str, database: list[int]
) -> None:
    """`database`: the store's server processes (PostgreSQL's postmaster), pinned with
    auth."""
    server_cpus, client_cpus = procs.core_split() if args.pin else (procs.ALL, None)
    # Auth's own CPU is printed; PostgreSQL's processes share its core, not its figure.
    shared = ", shared with PostgreSQL" if database else ""
    pinned = f" (on core {min(server_cpus)}{shared})" if args.pin else ""
    # Auth's default http_limits: they must fit 10,000 nodes (a keep-alive connection
    # each, plus a watch for the --watch share).
    text = f"version: v1\nauth_service:\n  workers: {args.auth_workers}\n"
    if conninfo:
        text += f"  storage:\n    type: postgres\n    conn_string: {json.dumps(conninfo)}\n"
    config = workdir / f"{backend}.yaml"
    config.write_text(text)
    extra = ["--config", str(config)]
    cluster = Cluster(workdir / backend, roles="auth,proxy", extra_args=extra)
    cluster.start(timeout=60)
    assert cluster.process is not None
    procs.pin([cluster.process.pid, *database], server_cpus)
    sampler = BehindSampler(cluster)
    workers: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Any] = []
    try:
        assert cluster.process is not None
        user = cluster.add_user("bench", roles="access")
        cluster.login(user)
        # One token per worker, without --uses: a use count is one item that every join
        # takes a turn at updating (compare-and-swap), and concurrent joins kept losing
        # that race (on PostgreSQL 400 joins took a minute). An operator adding many
        # nodes at once does the same: a short-lived token without a use limit.
        tokens = []
        for _ in range(args.workers):
            out = cluster.cgctl("tokens", "add", "--type=node", "--ttl=2h", "--format=json").stdout
            tokens.append(json.loads(out)["token"])
        names = [f"n{i:05d}-{socket.gethostname()[:8]}" for i in range(args.nodes)]
        context = multiprocessing.get_context("spawn")
        started = time.monotonic()
        for index in range(args.workers):
            parent, child = context.Pipe()
            share = names[index :: args.workers]
            process = context.Process(
                target=_worker,
                args=(
                    index,
                    share,
                    cluster.auth_addr,
                    tokens[index],
                    args.interval,
                    args.watch,
                    args.beats_over,
                    client_cpus,
                    child,
                ),
            )
            process.start()
            workers.append(process)
            pipes.append(parent)
        for pipe in pipes:
            assert pipe.recv() == "joined"
        joined_in = time.monotonic() - started
        print(
            f"[{backend}] {args.nodes} nodes joined in {joined_in:.0f} s; "
            f"{round(args.watch * 100)} % of them hold a watch stream; "
            + (
                "their beats ride it (one connection each)"
                if args.beats_over == "watch"
                else "beats on a connection of their own"
            )
        )

        # Steady state: let every node beat once and the join ramp settle (a slice with
        # no failure), then measure a window. The nodes start beating and watching
        # together once joined, 15,000 connections in 30 s at 10,000 nodes: more
        # handshakes than auth's core does in that time, so some wait past auth's
        # handshake_timeout and retry. Measured from 36 s after the joins (earlier
        # rounds), the window held that ramp's tail: 2,086, 652 and 0 failures in its
        # three 10 s slices, every one a new connection, none a kept one.
        time.sleep(args.interval * 1.2)
        ramp = _reports(pipes)
        settling = [ramp]
        while ramp["failed"] and len(settling) * SLICE_SECONDS < args.settle:
            time.sleep(SLICE_SECONDS)
            ramp = _reports(pipes)
            settling.append(ramp)
        settled = _merged(settling)
        print(
            f"[{backend}] settled {time.monotonic() - started - joined_in:.0f} s after the "
            f"joins ({'a slice' if not ramp['failed'] else 'no slice, within --settle'} "
            f"with no failure); meanwhile {settled['ok']} beats answered, "
            f"{settled['failed']} failed"
            + (f" ({_kinds(settled)})" if settled["failed"] else "")
            + f"; answered / failed in the first {args.interval * 1.2:.0f} s: "
            f"{settling[0]['ok']}/{settling[0]['failed']}, then per {SLICE_SECONDS:g} s: "
            + (", ".join(f"{p['ok']}/{p['failed']}" for p in settling[1:]) or "-"),
            flush=True,
        )
        pid = cluster.process.pid
        cpu0, wait0, t0 = _proc_cpu(pid), _runqueue_wait(pid), time.monotonic()
        generators0 = _generators_cpu(workers)
        database0 = procs.own_cpu_seconds(procs.tree(database)) if database else 0.0
        commits0 = _commits(conninfo)
        load0 = os.getloadavg()[0]
        spy = _start_profile(args.profile, pid, args.seconds) if args.profile else None
        # In slices, so a reader sees whether failures die down or go on.
        slices: list[dict[str, Any]] = []
        for _ in range(max(1, round(args.seconds / SLICE_SECONDS))):
            time.sleep(args.seconds / max(1, round(args.seconds / SLICE_SECONDS)))
            slices.append(_reports(pipes))
        window = _merged(slices)
        window["watching"] = slices[-1]["watching"]  # open now, not summed
        elapsed = time.monotonic() - t0
        cpu = (_proc_cpu(pid) - cpu0) / elapsed
        generators = (_generators_cpu(workers) - generators0) / elapsed
        starved = (_runqueue_wait(pid) - wait0) / elapsed
        load = (load0 + os.getloadavg()[0]) / 2
        rss, rss_now = _rss_mib(pid), _rss_mib(pid, "VmRSS")
        if database:
            print(
                f"[{backend}] PostgreSQL (on auth's core): "
                f"{(procs.own_cpu_seconds(procs.tree(database)) - database0) / elapsed:.2f} cores, "
                f"{(_commits(conninfo) - commits0) / elapsed:.0f} transactions/s"
            )
        print(
            f"[{backend}] heartbeats/s {window['ok'] / elapsed:.0f} "
            f"(offered ~{args.nodes / args.interval:.0f}/s; failed {window['failed']}"
            + (f": {window['error']}; by kind {_kinds(window)}" if window["failed"] else "")
            + "), "
            f"latency p50 {_pct(window['latency'], 0.5) * 1000:.0f} ms "
            f"p99 {_pct(window['latency'], 0.99) * 1000:.0f} ms; answered / failed per "
            f"{SLICE_SECONDS:g} s: " + ", ".join(f"{p['ok']}/{p['failed']}" for p in slices)
        )
        print(
            f"[{backend}] CPU: {_sides(cpu, generators, client_cpus, pinned)}; "
            f"auth+proxy ({len(_family(pid))} processes) waited {starved:.2f} s/s "
            f"runnable for a core (load average {load:.1f}); peak RSS {rss:.0f} MiB, "
            f"{rss_now:.0f} MiB now "
            f"(target <= {TARGET_RSS_MIB} MiB); {window['watching']} watch streams open, "
            f"{_open_connections(pid)} sockets open in auth; {sampler.report()}"
        )
        if spy is not None:
            spy.wait()
            _summarize_profile(args.profile, backend, int(min(args.seconds, PROFILE_SECONDS)))
        # And auth during the listings (10 s: most of them).
        spy = _start_profile(args.profile, pid, LS_PROFILE_SECONDS) if args.profile else None
        # `cgsh ls` (the table: what the target names) and `cgsh ls --format=json` (the
        # full node resources, for scripts) in turn, each timed with start-up; with
        # --baseline, the same two from that tree's cgsh right after them.
        commands = {"ls": ["ls"], "json": ["ls", "--format=json"]}
        times: dict[str, list[float]] = {}
        shown, errors, baseline = 0, [], []
        for _ in range(10):
            t = time.monotonic()
            cluster.cgsh(user, "status", check=False)  # start-up and profile, no listing
            baseline.append(time.monotonic() - t)
            for tree in ["", *([args.baseline] if args.baseline else [])]:
                for name, argv in commands.items():
                    env = {"CERTGATE_HOME": str(user.home)}
                    if tree:
                        env["PYTHONPATH"] = str(args.baseline_src)
                    t = time.monotonic()
                    result = run_command([str(BIN / "cgsh"), *argv], check=False, env=env)
                    if result.returncode != 0:
                        errors.append(result.stderr.strip())
                        continue
                    times.setdefault(f"{tree}{name}", []).append(time.monotonic() - t)
                    if not tree and name == "ls":
                        shown = len(result.stdout.splitlines()) - 2  # under header and rule
        listed, as_json = times.get("ls", []), times.get("json", [])
        print(
            f"[{backend}] cgsh ls ({shown} nodes listed): p50 {_pct(listed, 0.5):.2f} s "
            f"p99 {_pct(listed, 0.99):.2f} s (target p50 <= {TARGET_LS_P50:.0f} s); "
            f"cgsh ls --format=json: p50 {_pct(as_json, 0.5):.2f} s "
            f"p99 {_pct(as_json, 0.99):.2f} s; "
            f"`cgsh status` in the same runs (start-up, no listing): p50 "
            f"{_pct(baseline, 0.5):.2f} s, so listing took ~"
            f"{_pct(listed, 0.5) - _pct(baseline, 0.5):.2f} s of the ls p50"
            + (f"; {len(errors)} failed: {errors[0]}" if errors else "")
        )
        if args.baseline:
            base_ls, base_json = (
                times.get(f"{args.baseline}ls", []),
                times.get(f"{args.baseline}json", []),
            )
            print(
                f"[{backend}] the same runs with cgsh from {args.baseline} (this auth): "
                f"cgsh ls p50 {_pct(base_ls, 0.5):.2f} s p99 {_pct(base_ls, 0.99):.2f} s; "
                f"--format=json p50 {_pct(base_json, 0.5):.2f} s "
                f"p99 {_pct(base_json, 0.99):.2f} s"
            )
        if spy is not None:
            spy.wait()
            _summarize_profile(args.profile, f"{backend}-ls", LS_PROFILE_SECONDS, shown=0)
            _profile_client(args.profile, backend, user.home)

        if not args.restart:
            return
        # Restart: stop auth, start it again on the same store, time the returns.
        stopping = time.monotonic()
        try:
            cluster.stop()
        except subprocess.TimeoutExpired:  # SIGTERM took over 15 s; it was killed
            print(f"[{backend}] auth took over 15 s to stop on SIGTERM; killed")
        down_since = time.monotonic()
        print(f"[{backend}] auth stopped {down_since - stopping:.1f} s after SIGTERM")
        # Count returns from here on only. Nodes whose beat failed in the steady window
        # or during `cgsh ls` (thousands at 10,000 nodes) and was answered again before
        # the stop were counted as returned after the restart, and the earliest set the
        # curve's origin: the curve began up to 13 s before the stop, the whole downtime
        # showed as a pause in the returns, and "all back" grew by as much (127.7 s and
        # 139.7 s in two 10,000-node runs, where the first answer after the restart came
        # at 40 s and 48 s; their extra 992 and 1,936 returns were all before the pause).
        for pipe in pipes:
            pipe.send("mark")
        time.sleep(min(5.0, args.interval))  # heartbeats fail meanwhile (nodes retry)
        # Ready (/readyz: the store answers, the proxy has its first snapshot) may come
        # well after auth answers the first nodes: on PostgreSQL at 10,000 nodes it took
        # over 60 s (the store's pool busy with the returning nodes). Until then the
        # nodes are coming back all the same; the curve starts at the first answer.
        cluster.start(timeout=RESTART_READY_TIMEOUT)
        ready_at = time.time()
        sampler = BehindSampler(cluster)
        print(f"[{backend}] auth restarted ({time.monotonic() - down_since:.1f} s down)")
        assert cluster.process is not None
        pid = cluster.process.pid
        procs.pin([pid], server_cpus)
        cpu0, wait0, t0 = _proc_cpu(pid), _runqueue_wait(pid), time.monotonic()
        generators0 = _generators_cpu(workers)
        returned: list[float] = []
        seen: list[float] = []
        deadline = time.monotonic() + TARGET_REREGISTER + args.interval * 2
        while time.monotonic() < deadline:
            time.sleep(1)
            report = _reports(pipes)
            returned = report["returned"] + returned
            seen = report["seen"]  # cumulative since the mark
            if len(seen) >= args.nodes:
                break
        watching = report["watching"] if seen else 0
        elapsed = time.monotonic() - t0
        print(
            f"[{backend}] while they came back: "
            + _sides(
                (_proc_cpu(pid) - cpu0) / elapsed,
                (_generators_cpu(workers) - generators0) / elapsed,
                client_cpus,
                pinned,
            )
            + ", auth "
            f"{(_runqueue_wait(pid) - wait0) / elapsed:.2f} s/s waiting for a core, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        # Auth answers heartbeats a little before /readyz (the proxy starts after it):
        # the curve starts at the first answer after the restart.
        start = min([*returned, *seen, ready_at])
        after = sorted(t - start for t in returned)
        every = sorted(t - start for t in seen)
        last = every[-1] if len(every) >= args.nodes else float("inf")
        print(
            f"[{backend}] after the restart: {len(every)}/{args.nodes} nodes beat again, "
            f"all of them {last:.1f} s after auth first answered (target <= "
            f"{TARGET_REREGISTER:.0f} s; a node that saw no failure beats on its own "
            f"schedule, within --interval); {len(after)} had failed while auth was down, "
            f"all back by {(after[-1] if after else 0):.1f} s; "
            f"{watching} watch streams open again; {sampler.report()}"
        )
        if after:
            buckets: dict[int, int] = {}
            for t in after:
                buckets[int(t)] = buckets.get(int(t), 0) + 1
            curve = " ".join(f"{s}s:{buckets.get(s, 0)}" for s in range(int(after[-1]) + 1))
            print(
                f"[{backend}] failed nodes back, per second after the first answer "
                f"(peak {max(buckets.values())}/s): {curve}"
            )
    finally:
        for pipe in pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass
        for process in workers:
            process.join(timeout=20)
            if process.is_alive():
                process.kill()
        try:
            cluster.stop()
        except subprocess.TimeoutExpired:
            print(f"[{backend}] auth took over 15 s to stop on SIGTERM; killed")


def main() -> None:
    # One socket per node on each side: lift the open-files limit (children inherit it).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=30.0, help="heartbeat seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="steady window")
    parser.add_argument("--workers", type=int, default=4, help="load-generator processes")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--auth-workers",
        type=int,
        default=1,
        help="auth_service.workers (processes serving the auth API; 0: one per core)",
    )
    parser.add_argument(
        "--watch",
        type=float,
        default=1.0,
        help="share of nodes that hold a watch stream (every real node does)",
    )
    parser.add_argument(
        "--beats-over",
        choices=["watch", "call"],
        default="watch",
        help="watch: heartbeats ride the watch socket, as a node sends them now; call: "
        "POST /v1/nodes/heartbeat on a second connection, as before",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let auth and the load generators share every core (the old figure)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=180.0,
        help="seconds at most, after the joins, to wait for a 10 s slice without a failure",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy on auth for the steady window's first 20 s: DIR/auth-BACKEND-top.txt",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="also time `cgsh ls` with cgsh from this git revision (e.g. main), in turn",
    )
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="stop after `cgsh ls` (quicker runs for profiles)",
    )
    args = parser.parse_args()
    if args.pin:  # this process and the cgsh it runs are clients too
        os.sched_setaffinity(0, procs.core_split()[1])
    # Auth, its database and the generators all start from here: one scheduling group.
    print(f"scheduling: {procs.own_autogroup(AUTOGROUP_NICE)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="certgate-scale-") as tmp:
        workdir = Path(tmp)
        if args.baseline:
            args.baseline_src = baseline_tree(args.baseline, workdir / "baseline")
        for backend in args.backends.split(","):
            if backend == "postgres":
                with running_postgres() as server:
                    schema = server.create_schema()
                    postmaster = (server.root / "data" / "postmaster.pid").read_text()
                    database = [int(postmaster.split()[0])]
                    run_backend(backend, args, workdir, server.conninfo(schema), database)
            else:
                run_backend(backend, args, workdir, "", [])


if __name__ == "__main__":
    main()
