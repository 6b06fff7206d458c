"""Where the time goes between a lock request and the last session's close.

Each lock round of bench/concurrency.py gives the request's send and answer times and,
per session, when its close reached the client host (close_observer.py) and when its
client process had dealt with it (asyncssh). The servers say the rest in their logs
(srv/monitor.py, monotonic stamps: one clock for every process of the host):

    lock NAME: N client(s) cut in X ms, Y ms CPU (monotonic ARRIVED -> CUT)
    lock NAME: N client(s) hung up in X ms (monotonic DONE)
    lock NAME: no client here to cut (monotonic ARRIVED)

— the proxy's for its jump connections (hung up: every one of them closed), each node's
for its sessions (hung up: every connection closed, after the clients took the message
or at most 2 s). Stages are printed in ms after the request was sent.
"""

from __future__ import annotations

import argparse
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

TARGET_P99_MS = 200

_CUT = re.compile(
    r"lock (?P<name>\S+): (?P<count>\d+) client\(s\) cut in [\d.]+ ms, (?P<cpu>[\d.]+) ms CPU"
    r" \(monotonic (?P<arrived>[\d.]+) -> (?P<cut>[\d.]+)\)"
)
_NOBODY = re.compile(r"lock (?P<name>\S+): no client here to cut \(monotonic (?P<arrived>[\d.]+)\)")
_HUNG_UP = re.compile(
    r"lock (?P<name>\S+): (?P<count>\d+) client\(s\) hung up in [\d.]+ ms"
    r" \(monotonic (?P<done>[\d.]+)\)"
)


class ClusterLogs(Protocol):
    """What is read of tests/support/cluster.py's Cluster: where its logs are."""

    workdir: Path
    log: Path


@dataclass
class ServerStages:
    """One server's stages for one lock (monotonic times; 0: not logged)."""

    clients: int = 0
    arrived: float = 0.0
    cut: float = 0.0
    cut_cpu: float = 0.0  # ms of CPU the cut's pass took
    hung_up: float = 0.0


@dataclass
class LockRound:
    name: str  # the lock's
    sent: float  # the request, time.monotonic()
    answered: float  # auth's answer (the lock was committed before)
    processed: dict[str, float] = field(default_factory=dict)  # session -> asyncssh saw it
    arrived: dict[str, float] = field(default_factory=dict)  # session -> FIN/RST at the host
    proxy: ServerStages | None = None
    nodes: list[ServerStages] = field(default_factory=list)
    split: str = ""  # where the processes ran (bench/concurrency.py --lock-split)

    def read_stages(self, cluster: ClusterLogs, nodes: int) -> None:
        """The servers' stages, from their logs (before the run's directory goes)."""
        self.proxy = server_stages(cluster.log, self.name)
        self.nodes = [
            server_stages(cluster.workdir / f"bench-node-{n + 1}.log", self.name)
            for n in range(nodes)
        ]


def server_stages(log: Path, lock: str) -> ServerStages:
    stages = ServerStages()
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return stages
    for match in _CUT.finditer(text):
        if match["name"] == lock:
            stages.clients = int(match["count"])
            stages.arrived, stages.cut = float(match["arrived"]), float(match["cut"])
            stages.cut_cpu = float(match["cpu"])
    for match in _NOBODY.finditer(text):
        if match["name"] == lock:
            stages.arrived = float(match["arrived"])
    for match in _HUNG_UP.finditer(text):
        if match["name"] == lock:
            stages.hung_up = float(match["done"])
    return stages


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> str:
    """p50 / p99 / max in ms."""
    if not values:
        return "none seen"
    ms = [v * 1000 for v in values]
    return (
        f"p50 {statistics.median(ms):6.0f}  p99 {percentile(ms, 0.99):6.0f}  max {max(ms):6.0f} ms"
    )


def report_lock(args: argparse.Namespace, rounds: list[LockRound]) -> None:
    """Each round's stages, then the closes of all rounds of each split together."""
    for number, lock in enumerate(rounds, 1):
        print(
            f"\nlock round {number}{f' ({lock.split})' if lock.split else ''}: {args.sessions}"
            f" sessions ({args.busy} busy"
            f"{', forking' if getattr(args, 'busy_forks', False) else ''}) on"
            f" {args.nodes} nodes, ms after the lock request was sent"
        )
        report_round(lock, args.busy)
    for split in dict.fromkeys(lock.split for lock in rounds):
        chosen = [lock for lock in rounds if lock.split == split]
        arrived = [t for lock in chosen for t in after(lock.arrived, lock.sent)]
        processed = [t for lock in chosen for t in after(lock.processed, lock.sent)]
        print(
            f"\nlock on the user -> each of {args.sessions} sessions on {args.nodes} nodes closed"
            f" ({len(chosen)} round(s){f', {split}' if split else ''};"
            f" target p99 <= {TARGET_P99_MS} ms):"
        )
        print(f"  close at the client host (socket):  {spread(arrived)}")
        print(f"  close seen by the bench's asyncssh: {spread(processed)}")


def report_round(lock: LockRound, busy: int) -> None:
    def at(t: float) -> str:
        return f"{(t - lock.sent) * 1000:7.1f}" if t else "      -"

    print(f"  auth answered the request (lock committed before)  {at(lock.answered)}")
    proxy = lock.proxy or ServerStages()
    print(
        f"  proxy: lock event in {at(proxy.arrived)}, {proxy.clients} jump connections"
        f" cut {at(proxy.cut)} ({proxy.cut_cpu:.0f} ms CPU), all closed {at(proxy.hung_up)}"
    )
    per_node = lock.nodes
    for label, times in (
        ("lock event in", [s.arrived for s in per_node if s.arrived]),
        ("sessions cut ", [s.cut for s in per_node if s.cut]),
        ("hung up      ", [s.hung_up for s in per_node if s.hung_up]),
    ):
        first, last = (min(times), max(times)) if times else (0.0, 0.0)
        print(f"  nodes ({len(times)}/{len(per_node)}): {label} first {at(first)}, last {at(last)}")
    cpu = [s.cut_cpu for s in per_node]
    print(
        f"  sessions cut by the nodes: {sum(s.clients for s in per_node)}, their cut's CPU"
        f" {min(cpu, default=0):.0f}-{max(cpu, default=0):.0f} ms per node"
    )
    arrived = after(lock.arrived, lock.sent)
    busy_arrived = after({k: v for k, v in lock.arrived.items() if int(k) < busy}, lock.sent)
    busy_max = max(busy_arrived, default=0) * 1000
    print(
        f"  client host, each jump connection's FIN/RST in:  {spread(arrived)}"
        f"  ({len(arrived)} seen; the busy sessions' max {busy_max:.0f} ms)"
    )
    processed = after(lock.processed, lock.sent)
    print(f"  client processes, asyncssh done with each:       {spread(processed)}")
    if not proxy.clients:
        # The nodes ended every session (their words and close go through the jump
        # connection, unseen by the observer), and the bench's clients then closed the
        # jump connections themselves: the socket figure is their close, not the servers'.
        print(
            "  (the proxy cut no jump connection: the lock reached it after the sessions had"
            " ended through the nodes; the client-host figure above is then the bench's own"
            " close of each jump connection, the asyncssh figure the sessions' end)"
        )


def after(times: dict[str, float], start: float) -> list[float]:
    return [t - start for t in times.values()]
