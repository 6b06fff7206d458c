"""The CPU of one lock cut pass over N SSH connections, the way the proxy cuts its jump
connections, with each way of ending a connection this checkout has.

    .venv/bin/python bench/cut_pass.py [--connections 1000] [--rounds 5] [--profile]

One asyncssh server in this process, set up as the proxy's (corked.py's listener, AES-GCM,
no filler packets), and a client process (spawned: its CPU is not counted) holding
`--connections` connections, each with one direct-tcpip channel open, as a jump
connection has. Then the server ends all of them in one pass, the way `--ways` says:

    disconnect      asyncssh's disconnect() (a close packet per channel, the disconnect,
                    an abort), then the corked transport's cut (the FIN at once): the
                    proxy's cut before cut_connection
    cut_connection  corked.py cut_connection: the disconnect packet and the FIN in one
                    segment; the abort right after the pass

Printed per way, median over the rounds (the ways take turns): the pass's CPU and wall
time (what users wait for: every disconnect and FIN is written in the pass), and the CPU
until every connection is closed (the pass plus asyncssh's clean-up, a pass later). The
client checks that every connection got the disconnect message. `--profile` prints the
pass's top functions (cProfile) for each way.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import multiprocessing
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from certgate.daemon.event_loop import run  # noqa: E402
from certgate.srv.certcapture import skip_ignore_packets  # noqa: E402
from certgate.srv.corked import CORKED, CorkedListener, cut_connection  # noqa: E402

MESSAGE = "access denied: locked: bench"
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com"]  # what the proxy offers first


def cut_by_disconnect(conn: Any, message: str) -> None:
    """The proxy's cut before cut_connection (proxy/sshd.py `_disconnect`)."""
    transport = conn.get_extra_info(CORKED)
    conn.disconnect(asyncssh.DISC_BY_APPLICATION, message)
    if transport is not None:
        transport.cut()


WAYS: dict[str, Callable[[Any, str], None]] = {
    "disconnect": cut_by_disconnect,
    "cut_connection": cut_connection,
}


class _Tunnel(asyncssh.SSHTCPSession[bytes]):
    """A direct-tcpip channel's session that relays nothing (the proxy's NodeTunnel)."""


class _Server(asyncssh.SSHServer):
    def __init__(self, conns: list[Any], ready: asyncio.Event, count: int) -> None:
        self._conns = conns
        self._ready = ready
        self._count = count

    def connection_made(self, conn: Any) -> None:
        skip_ignore_packets(conn)
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: the cut is what is measured

    def connection_requested(self, *args: Any) -> Any:
        self._conns.append(self._conn)
        if len(self._conns) == self._count:
            self._ready.set()
        return _Tunnel()


# ---------------------------------------------------------------------- the client


class _Told(logging.Handler):
    """Counts the disconnects received with the lock's message. asyncssh hands a client no
    reason for a disconnect "by application" (connection_lost gets None); it logs it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.count += "Received disconnect" in text and MESSAGE in text


def _client(port: int, count: int, out: Any) -> None:
    asyncio.run(_hold(port, count, out))


async def _hold(port: int, count: int, out: Any) -> None:
    told = _Told()
    logging.getLogger("asyncssh").addHandler(told)
    logging.getLogger("asyncssh").setLevel(logging.DEBUG)
    asyncssh.set_debug_level(1)
    semaphore = asyncio.Semaphore(50)
    held: list[asyncssh.SSHClientConnection] = []

    async def one() -> None:
        async with semaphore:
            conn = await asyncssh.connect(
                "127.0.0.1", port, known_hosts=None, username="bench",
                client_keys=None, encryption_algs=ENCRYPTION_ALGS,
            )  # fmt: skip
            await conn.create_connection(asyncssh.SSHTCPSession, "node", 22)
            held.append(conn)

    await asyncio.gather(*(one() for _ in range(count)))
    out.send("open")
    await asyncio.gather(*(conn.wait_closed() for conn in held))
    out.send(told.count)


# ---------------------------------------------------------------------- the server


async def one_round(
    way: str, count: int, key: asyncssh.SSHKey, profile: bool
) -> tuple[float, float, float, str]:
    """(pass CPU, pass wall, CPU until all closed) in ms, and the profile's text."""
    conns: list[Any] = []
    ready = asyncio.Event()
    listener = await asyncssh.listen(
        tunnel=CorkedListener(), host="127.0.0.1", port=0, server_host_keys=[key],
        server_factory=lambda: _Server(conns, ready, count), encryption_algs=ENCRYPTION_ALGS,
    )  # fmt: skip
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe(duplex=False)
    child = context.Process(target=_client, args=(listener.get_port(), count, theirs))
    child.start()
    try:
        assert await asyncio.to_thread(mine.recv) == "open"
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(0.5)  # the last channel confirmations are out
        cut = WAYS[way]
        profiler = cProfile.Profile() if profile else None
        cpu, wall = time.thread_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for conn in conns:
            cut(conn, MESSAGE)
        if profiler is not None:
            profiler.disable()
        pass_cpu, pass_wall = time.thread_time() - cpu, time.perf_counter() - wall
        await asyncio.gather(*(conn.wait_closed() for conn in conns))
        all_cpu = time.thread_time() - cpu
        told = await asyncio.to_thread(mine.recv)
        if told != count:
            print(f"  {way}: only {told} of {count} clients got the message", flush=True)
    finally:
        await asyncio.to_thread(child.join)
        listener.close()
        await listener.wait_closed()
    text = ""
    if profiler is not None:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
        text = stream.getvalue()
    return pass_cpu * 1000, pass_wall * 1000, all_cpu * 1000, text


async def main_async(args: argparse.Namespace) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    results: dict[str, list[tuple[float, float, float]]] = {way: [] for way in args.ways}
    profiles: dict[str, str] = {}
    for number in range(args.rounds):
        ways = args.ways if number % 2 == 0 else list(reversed(args.ways))
        for way in ways:
            pass_cpu, pass_wall, all_cpu, text = await one_round(
                way, args.connections, key, args.profile and number == 0
            )
            results[way].append((pass_cpu, pass_wall, all_cpu))
            profiles.setdefault(way, text)
            print(
                f"round {number + 1} {way:15} pass {pass_cpu:6.1f} ms CPU {pass_wall:6.1f} ms"
                f" wall; until all closed {all_cpu:6.1f} ms CPU",
                flush=True,
            )
    load = Path("/proc/loadavg").read_text().strip()
    print(f"\n{args.connections} connections, median of {args.rounds} rounds (load {load}):")
    first = args.ways[0]
    for way, rows in results.items():
        pass_cpu = statistics.median(r[0] for r in rows)
        ratio = pass_cpu / statistics.median(r[0] for r in results[first])
        print(
            f"  {way:15} pass {pass_cpu:6.1f} ms CPU ({ratio:.2f}x {first}),"
            f" {statistics.median(r[1] for r in rows):6.1f} ms wall;"
            f" until all closed {statistics.median(r[2] for r in rows):6.1f} ms CPU"
        )
    for way, text in profiles.items():
        if text:
            print(f"\n---- {way}\n{text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
