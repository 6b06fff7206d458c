"""1,000 live sessions through one proxy, session starts per second, a lock that ends them all.

    .venv/bin/python bench/concurrency.py [--sessions 1000] [--busy 10] [--nodes 10]
                                          [--clients 50] [--client-procs 2] [--seconds 15]
                                          [--rounds 2] [--lock-rounds 1] [--lock-procs 4]
                                          [--profile DIR] [--split both|pinned|unpinned]
                                          [--event-loop uvloop|asyncio] [--compare-loop]
                                          [--baseline-src DIR]
                                          [--lock-split apart|pinned|both|unpinned]
                                          [--busy-forks] [--lock-only] [--start-nodes K]

Two paths, set up in the same run on this machine, driven by the same client (asyncssh,
in this script: 1,000 `ssh -J` processes, each with its own jump `ssh`, would weigh more
than what is measured):

  certgate: the client connects to the certgate proxy's SSH port (3023) with the user's
            certificate, opens a direct-tcpip channel to a node by name, and logs in to
            that certgate node (`certgate start --roles node`, its own process) through
            it — what `ssh -J` does with `cgsh config`. Auth and proxy run in one process.
  OpenSSH:  the bastion a user would otherwise build: an sshd jump host, then one of as
            many sshds as certgate has nodes; the same user certificate (TrustedUserCAKeys),
            host certificates from `cgctl auth sign`. Stock sshd settings but MaxStartups
            (the default 10:30:100 drops connections beyond 10 handshakes in flight).

Every session is a PTY shell (bash, the login's shell) that has answered `echo $((40+2))ok`;
`--busy` of them print a line every 10 ms for as long as they live (bash builtins only;
`--busy-forks`: with `date` and `sleep` forked per line, as the first version did), the
rest are idle.

Figures (printed next to their targets, nothing asserted):
- memory per live session: the sum of the RSS deltas of every process of the path's
  servers (the process trees under the certgate processes, under the sshds: per-connection
  sshd children and the shells included) from before the sessions opened to when they are
  all open, divided by the sessions. Also printed without the shells (the same bash on both
  paths), and as PSS (RSS counts a page shared by forked sshds once per process).
- session starts per second: `--clients` workers spread over `--client-procs` processes,
  each in a loop: connect to the jump host, tunnel, log in to the target, PTY shell, wait
  for its answer, close. The paths take turns, `--seconds` each, `--rounds` times. Server
  CPU per start from /proc (the process trees above, reaped children included).
  Each round runs the windows twice (`--split both`): unpinned (every process on any
  core: the old figure), then pinned — the servers of BOTH paths on the first core, the
  client processes on the others (sched_setaffinity, every thread; children inherit it) —
  so the clients' CPU (asyncssh, 10-15 ms per start) never stands in for a server's and
  both paths' servers get the same one core, as an operator's server would. Pinned, the
  figure that says what a server does is the server CPU per start without the servers'
  idle CPU, and 1000 / that = starts/s per server core; both are printed as ratios.
  Other jobs on the machine are not pinned: they still take their share of either core.
  Each client worker starts its sessions on one node, the workers spread over the nodes;
  `--start-nodes K` aims them all at the first K nodes (all `--nodes` still run and
  their CPU still counts). Pinned, ten Python node processes taking turns on one core
  for starts spread over all of them cost certgate about twice the CPU per start that
  the same starts cost on one node (each process meets its next start with a cold
  cache and fewer starts to batch per wake-up); forked sshds barely notice. In a
  deployment each node is a machine of its own and the proxy sees every start.
- event loop: the certgate processes run `--event-loop` (CERTGATE_EVENT_LOOP; uvloop by
  default); `--compare-loop` starts a second certgate (its own auth+proxy and nodes) on
  the other loop and adds it as a third path in the same starts windows.
- before/after: `--baseline-src DIR` starts one more certgate (its own auth+proxy and
  nodes) whose processes import certgate from DIR (e.g. `git archive main src | tar -x -C
  DIR/..`; PYTHONPATH, ahead of the venv's own), as a path "certgate@baseline" in the same
  starts windows: a change and what it changed, under the same load. The clients, cgctl
  and the node's spawn helper (`python -I`) are this checkout's.
- lock: with the 1,000 certgate sessions open (spread over the nodes, held by
  `--lock-procs` client processes: one process taking a thousand connections down would
  time its own event loop), a lock on their user is created through the auth API (what
  `cgctl lock` sends, from a process that holds no session, its TLS connection already
  up) and each session's close is timed from the moment the request was sent, two ways
  (p50/p99/max of both):
    at the client host: when the server's FIN/RST of the session's jump connection (the
      one a user's `ssh -J` holds) reached this host, noted by an observer process that
      holds a duplicate of every such socket in an epoll set (close_observer.py). When the
      proxy cuts the connection, this is when a real user's ssh, one connection on its
      own machine, prints the disconnect (the message arrives with the FIN). When the
      nodes end the sessions first, their words travel inside the jump connection, which
      the observer cannot read: the report says so, and the figure is then the bench
      clients' own close of the jump connections.
    by the bench's asyncssh: when the client process had dealt with it (the session's
      `wait_closed()`), the figure printed before. 250 sessions per client process, on
      the same cores as the servers and the shells that exit, are torn down one after
      the other: this figure times the bench's clients as much as the servers.
  Where the processes run during the lock (`--lock-split`; the sessions are opened
  unpinned, then each round places them, every thread, children included):
    apart (the default): the auth+proxy process (its auth workers included) alone on the
      first core; the nodes, their spawn helpers and shells, the sessions' client
      processes and the close observer on the other(s). What the target is about: one
      proxy in front of ten nodes that, in a deployment, are other machines, and users
      whose ssh runs on their own. The proxy still relays the busy sessions' output and
      takes what the nodes send at the lock, as it would.
    pinned: every certgate process (auth+proxy, the nodes, their shells) on the first
      core, the clients and the observer on the other(s): the proxy shares its core with
      the ten nodes' own cuts and the shells' exits at the lock (the figure before
      `apart`; what a proxy colocated with its nodes would see).
    both: apart and pinned taking turns, round by round (`--lock-rounds` per split).
    unpinned: every process on any core (the first version's figure).
  In every split the close observer runs in the real-time class when the kernel allows
  it (SCHED_FIFO; printed at the start, else nice -10): it is the measuring instrument,
  woken by each FIN it notes the time at once, whatever else runs on its core. The
  figure is the same in every split: from the lock request's send to each jump
  connection's FIN (or RST) at the client host. `apart` is the default because the
  target names a deployment's figure; `pinned` stays to watch what colocated nodes cost.
  Then each stage, from the servers' logs (lock_stages.py): auth's answer, the proxy's
  lock event, its cut of the jump connections and their last close, each node's event,
  cut and hang-up. `--rounds 0` skips the starts/s windows.
  `--lock-only` runs the lock rounds and nothing else (no OpenSSH, no memory, no starts
  windows), `--lock-rounds` of them on every certgate path (with `--baseline-src`, the
  baseline too), the paths taking turns round by round and the first path changing from
  round to round, so both meet the same moments of a shared machine; figures per path.

`--profile DIR` samples the auth+proxy process (its auth workers included) and one node with
py-spy (`pip install py-spy` into .venv) during the first certgate window of the last split,
writes the raw stacks to DIR/{proxy,node}.txt and, in ms per start, the top functions
(inclusive and self) to DIR/{proxy,node}-top.txt. With `--lock-only` it samples each lock
round instead (3 s from just before the request, 1,000 samples/s) and appends the top
functions in ms of CPU to DIR/{proxy,node}-lock-top.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The same Unix login, role (that login, every node) and host certificates as ssh_paths.py.
from bench.close_observer import CloseObserver, hand_over  # noqa: E402
from bench.lock_stages import LockRound, percentile, report_lock  # noqa: E402
from bench.procs import (  # noqa: E402
    ALL,
    TICK,
    core_split,
    cpu_seconds,
    own_cpu_seconds,
    pin,
    py_spy_path,
    tally_stacks,
    top_lines,
    tree,
)
from bench.ssh_paths import LOGIN, ROLE, sign_host  # noqa: E402
from certgate.api.codec import to_dict  # noqa: E402
from certgate.api.lock import Lock, LockSpec, LockTarget  # noqa: E402
from certgate.api.meta import Metadata  # noqa: E402
from certgate.daemon.event_loop import (  # noqa: E402
    ASYNCIO,
    DEFAULT_EVENT_LOOP,
    EVENT_LOOP_ENV,
    UVLOOP,
)
from certgate.rpc.auth_client import AsyncAuthClient  # noqa: E402
from certgate.rpc.identity_files import IdentityFiles  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.sshd import run_sshd  # noqa: E402
from tests.support.unix import ensure_user  # noqa: E402

USER = "bencher"
SHELL = "bash"
MARKER_COMMAND = "echo $((40+2))ok\n"
MARKER = "42ok"
# A busy session prints a line every 10 ms with bash builtins only: `read -t` on the
# PTY (nothing is typed) is the pause. The first version ran `$(date)` and `sleep` per
# line: ~2,700 processes forked a second by 10 sessions, which kept both cores busy on
# their own and timed the machine's fork rate more than certgate (`--busy-forks` keeps it,
# to compare). Both print the same lines at the same rate through the same path.
BUSY_COMMAND = "while :; do echo busy $EPOCHREALTIME; read -t 0.01; done\n"
BUSY_FORKING = "while :; do echo busy $(date +%s.%N); sleep 0.01; done\n"
BUSY_FORKS_ENV = "BENCH_BUSY_FORKS"  # set by --busy-forks; the spawned clients inherit it
RETRIES = 10  # per session open, 2 s apart


# ---------------------------------------------------------------------- processes


@dataclass
class Memory:
    rss: int = 0  # bytes, every process
    rss_no_shell: int = 0
    pss: int = 0
    processes: int = 0


def memory(roots: Iterable[int]) -> Memory:
    total = Memory()
    for pid in tree(roots):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in rollup.splitlines()[1:]
            if line.endswith("kB")
        }
        total.rss += fields.get("Rss", 0)
        total.pss += fields.get("Pss", 0)
        total.processes += 1
        if comm != SHELL:
            total.rss_no_shell += fields.get("Rss", 0)
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) core-seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, idle / TICK


# ---------------------------------------------------------------------- the paths


@dataclass
class Route:
    label: str
    jump_port: int
    jump_user: str
    targets: list[tuple[str, int]]  # (name given to the jump host, port)
    roots: list[int]  # the server processes whose trees are measured


@dataclass
class ClientKeys:
    key_file: str
    cert_file: str
    known_hosts: str  # text: "@cert-authority * <host CA key>"

    def options(self) -> dict[str, Any]:
        key = asyncssh.read_private_key(self.key_file)
        cert = asyncssh.read_certificate(self.cert_file)
        return {
            "client_keys": [(key, cert)],
            "known_hosts": asyncssh.import_known_hosts(self.known_hosts),
        }


@dataclass
class Session:
    jump: asyncssh.SSHClientConnection
    conn: asyncssh.SSHClientConnection
    process: asyncssh.SSHClientProcess[str]
    reader: asyncio.Task[None] | None = None
    closed_at: float = 0.0
    index: int = -1  # which session of the run (its node, whether it is busy)

    def close(self) -> None:
        self.conn.close()
        self.jump.close()
        if self.reader is not None:
            self.reader.cancel()


async def open_session(
    route: Route, index: int, options: dict[str, Any], busy: bool = False
) -> Session:
    jump = await asyncssh.connect("127.0.0.1", route.jump_port, username=route.jump_user, **options)
    try:
        host, port = route.targets[index % len(route.targets)]
        conn = await asyncssh.connect(host, port, tunnel=jump, username=LOGIN, **options)
        process = await conn.create_process(term_type="xterm", term_size=(80, 24))
        process.stdin.write(MARKER_COMMAND)
        await asyncio.wait_for(process.stdout.readuntil(MARKER), 30)
    except BaseException:
        jump.close()
        raise
    session = Session(jump, conn, process, index=index)
    if busy:
        forks = os.environ.get(BUSY_FORKS_ENV) == "1"
        process.stdin.write(BUSY_FORKING if forks else BUSY_COMMAND)
        session.reader = asyncio.create_task(_drain(process))
    return session


async def _drain(process: asyncssh.SSHClientProcess[str]) -> None:
    while await process.stdout.read(65536):
        pass


async def open_many(
    route: Route,
    options: dict[str, Any],
    count: int,
    busy: int,
    parallel: int,
    indices: Sequence[int] | None = None,
) -> list[Session]:
    """`count` sessions (numbered 0..count-1, or `indices`: which node, which are busy)."""
    semaphore = asyncio.Semaphore(parallel)
    sessions: list[Session] = []

    async def one(i: int) -> None:
        async with semaphore:
            for attempt in range(RETRIES):
                try:
                    sessions.append(await open_session(route, i, options, busy=i < busy))
                    break
                except (OSError, asyncssh.Error, TimeoutError) as exc:
                    # Said aloud and retried: on a machine this loaded auth (one process,
                    # one fair share of the CPU) answered heartbeats late enough for
                    # nodes to drop out of the inventory for a while.
                    if attempt == RETRIES - 1:
                        raise
                    print(f"{route.label}: session {i} failed ({exc!r}); retrying", flush=True)
                    await asyncio.sleep(2)
            if len(sessions) % 100 == 0:
                print(f"  {route.label}: {len(sessions)} sessions open", flush=True)

    numbers = range(count) if indices is None else indices
    results = await asyncio.gather(*(one(i) for i in numbers), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for session in sessions:
            session.close()
        raise RuntimeError(
            f"{route.label}: {len(errors)} of {count} sessions failed: {errors[0]!r}"
        )
    return sessions


async def close_all(sessions: list[Session]) -> None:
    for session in sessions:
        session.close()
    await asyncio.gather(*(s.jump.wait_closed() for s in sessions), return_exceptions=True)


# ---------------------------------------------------------------------- starts/s


def _start_worker(
    route: Route,
    keys: ClientKeys,
    workers: int,
    offset: int,
    seconds: float,
    cpus: set[int] | None,
    out: Any,
) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    before = resource.getrusage(resource.RUSAGE_SELF)
    done, failed, latencies, errors = asyncio.run(
        _start_loop(route, keys, workers, offset, seconds)
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    out.send((done, failed, latencies, errors, cpu))


async def _start_loop(
    route: Route, keys: ClientKeys, workers: int, offset: int, seconds: float
) -> tuple[int, int, list[float], list[str]]:
    options = keys.options()
    deadline = time.monotonic() + seconds
    done = 0
    failed = 0
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(w: int) -> None:
        nonlocal done, failed
        i = offset + w
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                session = await open_session(route, i, options)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                failed += 1
                errors.append(repr(exc))
                continue
            session.close()
            await session.jump.wait_closed()
            if time.monotonic() < deadline:
                done += 1
                latencies.append(time.perf_counter() - started)
            i += workers

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return done, failed, latencies, errors[:3]


@dataclass
class Starts:
    count: int = 0
    failed: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    idle_cpu: float = 0.0  # the servers' CPU over as long a window without clients
    first_cpu: float = 0.0  # of the first root: certgate's auth+proxy, OpenSSH's jump host
    roots_cpu: float = 0.0  # of the root processes alone: certgate's daemons, the sshd listeners
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def measure_starts(
    route: Route,
    keys: ClientKeys,
    clients: int,
    procs: int,
    seconds: float,
    into: Starts,
    client_cpus: set[int] | None = None,
) -> None:
    # What the servers burn with no client at all (heartbeats, watches, monitors: ten
    # nodes' worth), over a window as long, is taken off the figure per start.
    idle_before = cpu_seconds(route.roots)
    time.sleep(min(seconds, 5))
    into.idle_cpu += (cpu_seconds(route.roots) - idle_before) * seconds / min(seconds, 5)
    context = multiprocessing.get_context("spawn")
    pipes = []
    children = []
    share = [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]
    offset = 0
    cpu_before = cpu_seconds(route.roots)
    roots_before = own_cpu_seconds(route.roots)
    first_before = cpu_seconds(route.roots[:1])
    for workers in share:
        mine, theirs = context.Pipe(duplex=False)
        child = context.Process(
            target=_start_worker,
            args=(route, keys, workers, offset, seconds, client_cpus, theirs),
        )
        child.start()
        pipes.append(mine)
        children.append(child)
        offset += workers
    for pipe, child in zip(pipes, children, strict=True):
        done, failed, latencies, errors, cpu = pipe.recv()
        into.client_cpu += cpu
        into.errors.extend(errors)
        child.join()
        into.count += done
        into.failed += failed
        into.latencies.extend(latencies)
    # The window each worker counted in; spawning the processes is not part of it.
    into.seconds += seconds
    into.server_cpu += cpu_seconds(route.roots) - cpu_before
    into.first_cpu += cpu_seconds(route.roots[:1]) - first_before
    into.roots_cpu += own_cpu_seconds(route.roots) - roots_before


# ---------------------------------------------------------------------- cores

UNPINNED = "unpinned"
PINNED = "pinned"
APART = "apart"
BOTH = "both"
# Where the processes run during a lock round (`--lock-split`), in the words printed.
LOCK_SPLITS = {
    APART: "auth+proxy alone on the first core; the nodes, their shells, the sessions'"
    " clients and the close observer on the other(s), as in a deployment, where nodes are"
    " other machines",
    PINNED: "auth+proxy, the nodes and their shells on the first core; the sessions'"
    " clients and the close observer on the other(s)",
    UNPINNED: "every process on any core",
}
# ---------------------------------------------------------------------- lock


@dataclass
class LockShare:
    """One of the lock's client processes' part: its sessions, and where to hand their
    sockets (the close observer's Unix socket)."""

    route: Route
    keys: ClientKeys
    indices: list[int]
    busy: int
    parallel: int
    observer: str


def _lock_worker(share: LockShare, out: Any) -> None:
    """One of the lock's client processes: open its share of the sessions, hand their
    jump connections' sockets to the close observer, say so, and report when each one
    closed as asyncssh saw it (time.monotonic(): one clock for every process here)."""
    asyncio.run(_lock_sessions(share, out))


async def _lock_sessions(share: LockShare, out: Any) -> None:
    try:
        options = share.keys.options()
        count, busy, parallel = len(share.indices), share.busy, share.parallel
        sessions = await open_many(share.route, options, count, busy, parallel, share.indices)
        # The jump connection is the one a user's `ssh -J` holds to the proxy: when the
        # proxy cuts it, its end is what the user sees.
        jumps = [(str(s.index), s.jump.get_extra_info("socket")) for s in sessions]
        hand_over(share.observer, jumps)
    except Exception as exc:
        out.send(("failed", repr(exc)))
        return

    async def closed(session: Session) -> None:
        await session.process.wait_closed()
        session.closed_at = time.monotonic()

    waits = asyncio.gather(*(closed(s) for s in sessions))
    out.send(("open", len(sessions)))
    try:
        await asyncio.wait_for(waits, 120)
    finally:
        await close_all(sessions)
    out.send(("closed", {str(s.index): s.closed_at for s in sessions}))


def open_for_lock(
    route: Route, keys: ClientKeys, count: int, busy: int, procs: int, observer: str
) -> list[tuple[Any, Any]]:
    """`count` sessions held by `procs` client processes (one process closing a thousand
    connections would time itself, not the servers); returns once all are open. As many
    opens in flight in all as one process had (50): more only overloads auth."""
    context = multiprocessing.get_context("spawn")
    workers = []
    parallel = max(1, 50 // procs)
    for p in range(procs):
        mine, theirs = context.Pipe(duplex=False)
        share = LockShare(route, keys, list(range(p, count, procs)), busy, parallel, observer)
        child = context.Process(
            target=_lock_worker,
            args=(share, theirs),
            daemon=True,  # gone with this process, however it ends
        )
        child.start()
        workers.append((mine, child))
    for pipe, _ in workers:
        status, detail = pipe.recv()
        if status != "open":
            for _, child in workers:
                child.kill()
            raise RuntimeError(f"{route.label}: a client process failed: {detail}")
    return workers


async def lock_round(
    cluster: Cluster, workers: list[tuple[Any, Any]], observer: CloseObserver, count: int
) -> LockRound:
    """Lock the sessions' user (from this process, which holds no session, as `cgctl lock`
    would); when each session's close reached the client host (the observer) and when
    its client process had dealt with it (asyncssh)."""
    admin = IdentityFiles.load(cluster.data_dir / "admin")
    client = AsyncAuthClient(f"https://{cluster.auth_addr}", admin.tls_context())
    lock = Lock(
        metadata=Metadata(name=str(uuid.uuid4())),
        spec=LockSpec(target=LockTarget(user=USER), message="bench"),
    )
    await client.call("GET", "/v1/ping")  # the TLS handshake is not part of the figure
    sent = time.monotonic()
    await client.call("POST", "/v1/resources", json={"resource": to_dict(lock)})
    result = LockRound(lock.name, sent, answered=time.monotonic())
    try:
        for pipe, child in workers:
            status, times = await asyncio.to_thread(pipe.recv)
            assert status == "closed", times
            result.processed.update(times)
            await asyncio.to_thread(child.join)
        # Every close reached the host before its client process noted it.
        result.arrived = await asyncio.to_thread(observer.collect, count, 5.0)
    finally:
        await client.call("DELETE", f"/v1/resources/lock/{lock.name}")
        await client.close()
    return result


# ---------------------------------------------------------------------- set-up


def sshd_pid(workdir: Path) -> int:
    return int((workdir / "sshd.pid").read_text().split()[0])


def host_ca_line(known_hosts: Path) -> str:
    """`@cert-authority * KEY` from the user's known_hosts (which names the cluster's hosts)."""
    for line in known_hosts.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "@cert-authority":
            return f"@cert-authority * {fields[2]} {fields[3]}\n"
    raise RuntimeError(f"no @cert-authority line in {known_hosts}")


def mib(value: float) -> str:
    return f"{value / 1024**2:8.1f} MiB"


def kib(value: float) -> str:
    return f"{value / 1024:8.0f} KiB"


def settle_memory(roots: list[int]) -> Memory:
    time.sleep(2)  # let the last sessions' start-up garbage go
    return memory(roots)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--busy", type=int, default=10, help="sessions that print output")
    parser.add_argument(
        "--lock-split",
        default=APART,
        choices=[APART, PINNED, BOTH, UNPINNED],
        help="during the lock: auth+proxy alone on the first core, the nodes and clients on"
        " the others (apart, default); all of certgate on the first core, the clients on the"
        " others (pinned); apart and pinned taking turns (both); or every process on any core",
    )
    parser.add_argument(
        "--busy-forks",
        action="store_true",
        help="busy sessions fork date and sleep per line (the first version's workload)",
    )
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50, help="parallel clients for starts/s")
    parser.add_argument(
        "--start-nodes", type=int, default=None,
        help="the starts go to the first K of the --nodes (default: all of them)",
    )  # fmt: skip
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15, help="each starts/s window")
    parser.add_argument("--rounds", type=int, default=2, help="starts/s windows per path")
    parser.add_argument("--lock-rounds", type=int, default=1)
    parser.add_argument(
        "--lock-procs", type=int, default=4, help="client processes holding the lock's sessions"
    )
    parser.add_argument("--openssh-sessions", type=int, default=0, help="0: as --sessions")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--starts-only", action="store_true", help="skip memory and lock")
    parser.add_argument(
        "--lock-only",
        action="store_true",
        help="only the lock rounds, on every certgate path (the baseline's too)",
    )
    parser.add_argument(
        "--split",
        choices=[BOTH, UNPINNED, PINNED],
        default="both",
        help="starts/s windows with every process on any core, servers and clients on"
        " separate cores, or both (default)",
    )
    parser.add_argument(
        "--event-loop",
        choices=[ASYNCIO, UVLOOP],
        default=DEFAULT_EVENT_LOOP,
        help="the certgate processes' event loop (CERTGATE_EVENT_LOOP)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also start a certgate importing its code from this src directory (before/after)",
    )
    parser.add_argument(
        "--compare-loop",
        action="store_true",
        help="also start a second certgate running the other event loop, for starts/s",
    )
    args = parser.parse_args()
    args.split = [UNPINNED, PINNED] if args.split == BOTH else [args.split]
    args.lock_splits = [APART, PINNED] if args.lock_split == BOTH else [args.lock_split]
    os.environ[BUSY_FORKS_ENV] = "1" if args.busy_forks else "0"
    openssh_sessions = args.openssh_sessions or args.sessions
    ensure_user(LOGIN)

    with tempfile.TemporaryDirectory(prefix="certgate-bench-conc-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        cluster, certgate, keys = start_certgate(workdir / "cluster", args, args.event_loop)
        stack.callback(cluster.stop)
        paths = [certgate]
        keys_for = {certgate.label: keys}
        others: dict[str, Cluster] = {}  # the other certgate paths' clusters, by label
        if args.baseline_src is not None:
            base_cluster, base_route, base_keys = start_certgate(
                workdir / "cluster-baseline", args, args.event_loop, label="certgate@baseline",
                pythonpath=args.baseline_src,
            )  # fmt: skip
            stack.callback(base_cluster.stop)
            paths.append(base_route)
            others[base_route.label] = base_cluster
            keys_for[base_route.label] = base_keys
        if args.compare_loop:
            other = ASYNCIO if args.event_loop == UVLOOP else UVLOOP
            other_cluster, other_route, other_keys = start_certgate(
                workdir / "cluster-other-loop", args, other, label=f"certgate/{other}"
            )
            stack.callback(other_cluster.stop)
            paths.append(other_route)
            others[other_route.label] = other_cluster
            keys_for[other_route.label] = other_keys
        if args.lock_only:
            return lock_only(args, paths, keys_for, {certgate.label: cluster, **others}, workdir)
        user_ca = cluster.cgctl("auth", "export", "--type=user").stdout
        sshd_config = f"LogLevel ERROR\nMaxStartups {max(100, args.clients * 2)}\n"
        sshds = []
        for name in ["bench-jump", *(f"bench-sshd-{n + 1}" for n in range(args.nodes))]:
            key, cert = sign_host(cluster, name, workdir / name / "host_key")
            sshds.append(
                stack.enter_context(
                    run_sshd(
                        workdir / name, user_ca, host_key=key, host_cert=cert,
                        extra_config=sshd_config,
                    )
                )
            )  # fmt: skip
        openssh = Route(
            "OpenSSH",
            sshds[0].port,
            LOGIN,
            [("127.0.0.1", s.port) for s in sshds[1:]],
            [sshd_pid(s.workdir) for s in sshds],
        )
        keys_for[openssh.label] = keys
        options = keys.options()

        async def warm_up() -> None:
            for route in (*paths, openssh):
                opts = keys_for[route.label].options()
                await close_all(await open_many(route, opts, 20, 0, 10))

        asyncio.run(warm_up())
        time.sleep(1)

        memories: dict[str, tuple[Memory, Memory]] = {}
        lock_rounds: list[LockRound] = []
        if not args.starts_only:
            memories, lock_rounds = sessions_phase(
                args, cluster, certgate, openssh, options, keys, workdir
            )

        # ---- starts/s, the paths taking turns, unpinned and/or on split cores
        starts: dict[str, dict[str, Starts]] = {
            split: {route.label: Starts() for route in (*paths, openssh)} for split in args.split
        }
        servers = [root for route in (*paths, openssh) for root in route.roots]
        busy_before, idle_before = machine_cpu()
        routes = [*paths, openssh]
        for number in range(args.rounds):
            for split in args.split:
                server_cpus, client_cpus = core_split() if split == PINNED else (ALL, None)
                # The first path changes from round to round: in a fixed order the same
                # code measured as two paths (`--baseline-src` of this tree) came out 6 %
                # apart in CPU per start, in favour of the second.
                turn = number % len(routes)
                for route in routes[turn:] + routes[:turn]:
                    print(f"starts/s round {number + 1} ({split}): {route.label}...", flush=True)
                    # Both paths' servers on the same cores, re-applied before each window
                    # (children inherit it; a process started since would not have it).
                    pin(servers, server_cpus)
                    spy: list[subprocess.Popen[bytes]] = []
                    if (
                        args.profile is not None
                        and number == 0
                        and split == args.split[-1]
                        and route is certgate
                    ):
                        spy = start_profile(args.profile, cluster, args.seconds)
                    into = starts[split][route.label]
                    count_before = into.count
                    route_keys = keys_for[route.label]
                    clients, procs = args.clients, args.client_procs
                    # --start-nodes: the starts go to the first K targets; every
                    # process's CPU is still counted.
                    aimed = replace(route, targets=route.targets[: args.start_nodes])
                    measure_starts(
                        aimed, route_keys, clients, procs, args.seconds, into, client_cpus
                    )
                    for process in spy:
                        process.wait()
                    if spy and args.profile is not None:
                        summarize_profile(
                            args.profile, into.count - count_before, args.start_nodes or args.nodes
                        )
        pin(servers, ALL)
        busy_after, idle_after = machine_cpu()

    machine = (busy_after - busy_before, idle_after - idle_before)
    report(args, openssh_sessions, memories, starts, machine)
    if lock_rounds:
        report_lock(args, lock_rounds)
    return 0


def start_certgate(
    directory: Path,
    args: argparse.Namespace,
    loop: str,
    label: str = "certgate",
    pythonpath: Path | None = None,
) -> tuple[Cluster, Route, ClientKeys]:
    """Auth+proxy and --nodes nodes running `loop` (CERTGATE_EVENT_LOOP), importing certgate
    from `pythonpath` if given, the bench role and a logged-in user; the route through them
    and the user's keys."""
    saved = {name: os.environ.get(name) for name in (EVENT_LOOP_ENV, "PYTHONPATH")}
    os.environ[EVENT_LOOP_ENV] = loop  # the processes inherit it
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = str(pythonpath.resolve())
    try:
        cluster = Cluster(directory, roles="auth,proxy")
        cluster.start()
        nodes: list[tuple[str, int]] = []
        for n in range(args.nodes):
            name = f"bench-node-{n + 1}"
            # Nodes heartbeat every 10 s here: at the test helper's 1 s (a 1.5 s TTL) a busy
            # machine lets nodes expire from the inventory mid-run.
            _, port = cluster.start_node(name, "env=bench", "--heartbeat-interval", "10s")
            nodes.append((name, port))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    cluster.cgctl("create", "-f", "-", input=ROLE)
    user = cluster.add_user(USER, roles="bench")
    cluster.login(user)
    keys_dir = user.home / "keys"
    keys = ClientKeys(
        str(keys_dir / "key"),
        str(keys_dir / "key-cert.pub"),
        host_ca_line(keys_dir / "known_hosts"),
    )
    assert cluster.process is not None
    route = Route(
        f"{label}",
        cluster.ssh_proxy_port,
        "certgate",
        nodes,
        [cluster.process.pid, *(p.pid for p in cluster.nodes)],
    )
    return cluster, route, keys


def sessions_phase(
    args: argparse.Namespace,
    cluster: Cluster,
    certgate: Route,
    openssh: Route,
    options: dict[str, Any],
    keys: ClientKeys,
    workdir: Path,
) -> tuple[dict[str, tuple[Memory, Memory]], list[LockRound]]:
    """Memory of N live sessions on each path (OpenSSH first: its processes go away after
    the sessions do), then the lock on the certgate sessions' user."""
    openssh_sessions = args.openssh_sessions or args.sessions
    print(f"opening {openssh_sessions} sessions through OpenSSH...", flush=True)
    base_openssh = memory(openssh.roots)

    async def openssh_memory() -> Memory:
        sessions = await open_many(openssh, options, openssh_sessions, args.busy, 50)
        loaded = await asyncio.to_thread(settle_memory, openssh.roots)
        await close_all(sessions)
        return loaded

    loaded_openssh = asyncio.run(openssh_memory())
    print(f"opening {args.sessions} sessions through certgate...", flush=True)
    base_certgate = memory(certgate.roots)
    lock_rounds: list[LockRound] = []
    loaded_certgate: Memory | None = None
    observer = start_observer(workdir, args.lock_splits)
    try:
        for number in range(max(1, args.lock_rounds)):
            for split in args.lock_splits:
                workers = open_for_lock(
                    certgate, keys, args.sessions, args.busy, args.lock_procs, observer.path
                )
                if loaded_certgate is None:
                    loaded_certgate = settle_memory(certgate.roots)
                print(
                    f"lock round {number + 1} ({split}): {args.sessions} certgate sessions",
                    flush=True,
                )
                lock_rounds.append(run_lock(args, cluster, certgate, workers, observer, split))
    finally:
        observer.stop()
    assert loaded_certgate is not None

    memories = {
        certgate.label: (base_certgate, loaded_certgate),
        openssh.label: (base_openssh, loaded_openssh),
    }
    return memories, lock_rounds


def start_observer(workdir: Path, splits: list[str]) -> CloseObserver:
    """The close observer, and what the lock rounds' splits mean (printed once)."""
    observer = CloseObserver.start(workdir)
    for split in splits:
        print(f"lock split {split}: {LOCK_SPLITS[split]}", flush=True)
    print(f"close observer: {observer.priority}", flush=True)
    return observer


def place_for_lock(
    split: str, route: Route, workers: list[tuple[Any, Any]], observer: CloseObserver
) -> None:
    """Put the path's processes and the lock's clients where `split` says (LOCK_SPLITS).

    A user's ssh runs on the user's machine: in both split ways the sessions' clients and
    the observer are off the server core, so the clients' teardown of 1,000 sessions
    cannot take the servers' CPU. `pinned` puts every certgate process (the shells
    included) on that one core; `apart` only the auth+proxy process (its auth workers
    included), the nodes going with the clients, as nodes are other machines in a
    deployment. The observer's timestamps do not wait for that busy core: it runs in the
    real-time class (close_observer.py), when allowed."""
    clients = [observer.process.pid, *(child.pid for _, child in workers)]
    client_pids = [pid for pid in clients if pid is not None]
    if split == UNPINNED:
        pin(route.roots, ALL)
        pin(client_pids, ALL)
        return
    server_cpus, client_cpus = core_split()
    if split == PINNED:
        pin(route.roots, server_cpus)
    else:
        pin(route.roots[:1], server_cpus)
        pin(route.roots[1:], client_cpus)
    pin(client_pids, client_cpus)


def run_lock(
    args: argparse.Namespace,
    cluster: Cluster,
    route: Route,
    workers: list[tuple[Any, Any]],
    observer: CloseObserver,
    split: str,
) -> LockRound:
    """One lock on the sessions `workers` hold open through `route`, with the processes
    placed as `split` says, and its stages."""
    place_for_lock(split, route, workers, observer)
    spy: list[subprocess.Popen[bytes]] = []
    if args.profile is not None and args.lock_only:
        spy = start_profile(args.profile, cluster, LOCK_PROFILE_SECONDS, LOCK_PROFILE_RATE)
        time.sleep(0.5)  # py-spy attached
    lock = asyncio.run(lock_round(cluster, workers, observer, args.sessions))
    lock.split = split
    for process in spy:
        process.wait()
    if spy and args.profile is not None:
        summarize_lock_profile(args.profile, f"{route.label} {split}")
    pin(route.roots, ALL)
    time.sleep(3)  # every node sees the lock go, and logs its last hang-up
    lock.read_stages(cluster, args.nodes)
    return lock


def lock_only(
    args: argparse.Namespace,
    paths: list[Route],
    keys_for: dict[str, ClientKeys],
    clusters: dict[str, Cluster],
    workdir: Path,
) -> int:
    """`--lock-only`: `--lock-rounds` locks on every certgate path in every lock split,
    taking turns (the first path and split changing from round to round), and the figures
    of each path in each split."""
    turns = [(split, route) for split in args.lock_splits for route in paths]
    rounds: dict[tuple[str, str], list[LockRound]] = {
        (route.label, split): [] for split, route in turns
    }
    observer = start_observer(workdir, args.lock_splits)
    try:
        for number in range(max(1, args.lock_rounds)):
            shift = number % len(turns)
            for split, route in turns[shift:] + turns[:shift]:
                workers = open_for_lock(
                    route, keys_for[route.label], args.sessions, args.busy, args.lock_procs,
                    observer.path,
                )  # fmt: skip
                print(
                    f"lock round {number + 1} ({split}): {args.sessions} sessions through"
                    f" {route.label} (load average {Path('/proc/loadavg').read_text().split()[0]})",
                    flush=True,
                )
                lock = run_lock(args, clusters[route.label], route, workers, observer, split)
                rounds[(route.label, split)].append(lock)
    finally:
        observer.stop()
    for (label, split), locks in rounds.items():
        print(f"\n==== {label}, {split}")
        report_lock(args, locks)
    print(f"\nload average at the end: {Path('/proc/loadavg').read_text().strip()}")
    return 0


PROFILE_RATE = 250  # samples per second
# `--lock-only --profile DIR`: the lock round sampled this long, this often (it is short).
LOCK_PROFILE_SECONDS = 3
LOCK_PROFILE_RATE = 1000


def start_profile(
    directory: Path, cluster: Cluster, seconds: float, rate: int = PROFILE_RATE
) -> list[subprocess.Popen[bytes]]:
    """py-spy on the auth+proxy process (its auth workers included) and on one node.

    Not `--gil`: the GIL is released in the crypto, fork/exec and system calls that are a
    start's cost. Idle threads are left out (py-spy's default), so samples are CPU-ish."""
    directory.mkdir(parents=True, exist_ok=True)
    py_spy = py_spy_path()
    assert cluster.process is not None
    targets = {"proxy": cluster.process.pid, "node": cluster.nodes[0].pid}
    return [
        subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--subprocesses",
                "--output",
                str(directory / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets.items()
    ]


def summarize_lock_profile(directory: Path, label: str, top: int = 30) -> None:
    """DIR/{proxy,node}-lock-top.txt: during a lock round (`--lock-only --profile`), the
    functions that took the most samples, in ms of CPU (inclusive and self); the raw
    stacks are kept per path and round."""
    for name in ("proxy", "node"):
        raw = directory / f"{name}.txt"
        if not raw.exists():
            continue
        tag = label.replace("@", "-").replace(" ", "-")
        kept = directory / f"{name}-lock-{tag}-{int(time.time())}.txt"
        raw.rename(kept)
        inclusive, own, total = tally_stacks(kept)
        per = 1000 / LOCK_PROFILE_RATE
        lines = [f"{label} {name}: {total} samples, {total * per:.0f} ms ({kept.name})"]
        lines += top_lines(inclusive, own, per, top, decimals=1)
        with (directory / f"{name}-lock-top.txt").open("a") as out:
            out.write("\n".join(lines) + "\n\n")


def summarize_profile(directory: Path, starts: int, nodes: int, top: int = 25) -> None:
    """DIR/{proxy,node}-top.txt: the functions that take the most samples, as ms per start
    (inclusive: the function and what it calls; self: the function alone). The node
    figure is per start *on that node*, one of --nodes."""
    for name in ("proxy", "node"):
        raw = directory / f"{name}.txt"
        if not raw.exists():
            continue
        inclusive, own, total = tally_stacks(raw)
        share = starts if name == "proxy" else max(1, starts // max(1, nodes))
        per = 1000 / PROFILE_RATE / max(1, share)
        lines = [f"{name}: {total} samples, {total * per:.1f} ms per start ({share} starts)"]
        lines += top_lines(inclusive, own, per, top, decimals=2)
        (directory / f"{name}-top.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[:12]), flush=True)


def report(
    args: argparse.Namespace,
    openssh_sessions: int,
    memories: dict[str, tuple[Memory, Memory]],
    starts: dict[str, dict[str, Starts]],
    machine: tuple[float, float],
) -> None:
    version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    print(
        f"\n{os.cpu_count()} cores, shared with other jobs (machine CPU during the starts"
        f" windows: {machine[0]:.0f} core-s busy, {machine[1]:.0f} core-s idle); client:"
        f" asyncssh {asyncssh.__version__}; baseline: {version} sshd jump host -> sshd"
    )
    if memories:
        report_memory(args, openssh_sessions, memories)
    if args.rounds:  # --rounds 0: memory and the lock only
        report_starts(args, starts)


def report_memory(
    args: argparse.Namespace, openssh_sessions: int, memories: dict[str, tuple[Memory, Memory]]
) -> None:
    counts = {"certgate": args.sessions, "OpenSSH": openssh_sessions}
    print(
        f"\nmemory per live session ({args.busy} busy, the rest idle PTY shells;"
        f" certgate: 1 proxy + {args.nodes} nodes, OpenSSH: jump + {args.nodes} sshds)"
    )
    print(f"{'path':10} {'sessions':>8} {'processes':>10} {'RSS/session':>13}"
          f" {'w/o shells':>12} {'PSS/session':>12}")  # fmt: skip
    per: dict[str, tuple[float, float, float]] = {}
    for label, (base, loaded) in memories.items():
        n = counts[label]
        per[label] = (
            (loaded.rss - base.rss) / n,
            (loaded.rss_no_shell - base.rss_no_shell) / n,
            (loaded.pss - base.pss) / n,
        )
        print(
            f"{label:10} {n:8d} {base.processes:4d}->{loaded.processes:<5d}"
            f" {kib(per[label][0])} {kib(per[label][1])} {kib(per[label][2])}"
        )
    c, o = per["certgate"], per["OpenSSH"]
    print(
        f"{'ratio':10} {'':8} {'':10} {c[0] / o[0]:12.3f}x {c[1] / o[1]:11.3f}x"
        f" {c[2] / o[2]:11.3f}x   (target: keep ~0.02x or below, issue 13)"
    )


def report_starts(args: argparse.Namespace, starts: dict[str, dict[str, Starts]]) -> None:
    aimed = f", aimed at {args.start_nodes} of the {args.nodes} nodes" if args.start_nodes else ""
    print(f"\nsession starts/s, {args.clients} parallel clients in {args.client_procs} processes,"
          f" {args.rounds} x {args.seconds:.0f} s per path and split{aimed}")  # fmt: skip
    for split, paths in starts.items():
        if split == PINNED:
            server_cpus, client_cpus = core_split()
            where = (
                f"pinned: the servers of both paths on core(s) {sorted(server_cpus)}, the"
                f" clients on {sorted(client_cpus)} (other jobs on the machine are not pinned)"
            )
        else:
            where = "unpinned: servers and clients on any core"
        print(f"\n{where}")
        report_split(paths)
    if PINNED in starts:
        o = starts[PINNED]["OpenSSH"]
        o_ms = cpu_per_start(o)
        print(f"\npinned, what one server core does (OpenSSH: {o_ms:.1f} ms CPU per start ="
              f" {1000 / o_ms:.1f} starts/s per core):")  # fmt: skip
        for label, c in starts[PINNED].items():
            if label == "OpenSSH":
                continue
            c_ms = cpu_per_start(c)
            print(
                f"  {label}: {c_ms:.1f} ms CPU per start = {1000 / c_ms:.1f} starts/s per core:"
                f" {o_ms / c_ms:.2f}x OpenSSH's; measured starts/s {c.rate / o.rate:.2f}x"
                "   (target >= 5x)"
            )


def cpu_per_start(s: Starts) -> float:
    """Server CPU (ms) per start, the servers' idle CPU over the window taken off."""
    return max(0.001, (s.server_cpu - s.idle_cpu) * 1000 / max(1, s.count))


def report_split(starts: dict[str, Starts]) -> None:
    print(
        f"{'path':18} {'starts/s':>9} {'failed':>7} {'p50':>8} {'p99':>8} {'server CPU/start':>17}"
        f" {'starts/s/core':>14}"
    )
    for label, s in starts.items():
        print(
            f"{label:18} {s.rate:9.1f} {s.failed:7d} {statistics.median(s.latencies) * 1000:6.0f}ms"
            f" {percentile(s.latencies, 0.99) * 1000:6.0f}ms"
            f" {s.server_cpu / max(1, s.count) * 1000:14.1f} ms"
            f" {1000 / cpu_per_start(s):14.1f}"
        )
    for label, s in starts.items():
        per = 1000 / max(1, s.count)
        first = "auth+proxy process" if label != "OpenSSH" else "jump sshd"
        roots = "daemon processes" if label != "OpenSSH" else "sshd listeners"
        children = "spawn helpers, shells" if label != "OpenSSH" else "sshds per connection, shells"
        print(
            f"  {label} server CPU per start: {first} {s.first_cpu * per:.1f} ms, the targets"
            f" {(s.server_cpu - s.first_cpu) * per:.1f} ms; the client {s.client_cpu * per:.1f} ms;"
            f" without the servers' idle CPU {cpu_per_start(s):.1f} ms; of which the"
            f" {roots} themselves {s.roots_cpu * per:.1f} ms, their children ({children})"
            f" {(s.server_cpu - s.roots_cpu) * per:.1f} ms"
        )
        for error in s.errors[:3]:
            print(f"  {label} failure: {error}")
    for label, s in starts.items():
        if label != "OpenSSH":
            ratio = s.rate / starts["OpenSSH"].rate
            print(f"ratio {label:18} {ratio:6.2f}x starts/s   (target >= 5x)")


if __name__ == "__main__":
    sys.exit(main())
