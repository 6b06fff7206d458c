"""What session recording costs, and how fast the audit log answers at 1M events.

    .venv/bin/python bench/recording_overhead.py [--mib 64] [--rounds 12]
                                                 [--events 1000000] [--queries 20]
                                                 [--skip-throughput] [--skip-audit]

Twelve rounds by default: on a 2-core machine one run's figures vary by +-15%, and six
rounds gave on/off medians from 0.89 to 0.97 for the same code; twelve keep it within a
couple of points.

1. Throughput: a real cluster (`certgate start --roles auth,proxy,node`) in a temporary
   directory; two users reach node-1 as root through the proxy with stock OpenSSH
   (`cgsh config`): one whose role says `record_session: {ssh: off}`, one with the
   default (`best_effort`: every pty session recorded). Each round `cat`s the same
   text file (`--mib` MiB, lines of printable text) in a pty session
   (`ssh -tt ... cat FILE`, the node's interactive data path: pty -> channel, and for
   the recorded user the recorder), output to /dev/null, recording off then on, and
   waits between runs until the node has uploaded the recording, so one run's upload
   never overlaps the next run; rounds alternate which mode goes first. Figures: MiB/s
   and the certgate process's CPU per MiB for each run (all threads, and its event loop
   thread alone, which relays every session), best and median per mode, the on/off
   ratio of the medians, and how long the upload of a recording took (it converts the
   node's raw session log to asciicast as it sends it). First, in this process, what
   the recorder alone costs the event loop per MiB, and what converting its log costs.
2. Audit: `--events` events bulk-loaded (`append_many`, 10,000 a transaction) into
   the cluster's own event store (a realistic mix: 200 users, 500 nodes, the event
   types a cluster emits, spread over 30 days), then each query `--queries` times, at
   the store and through the auth API (`GET /v1/events` with the admin identity, one
   keep-alive mTLS connection): median and p95.

Figures are printed, never asserted (see bench/README.md). Targets (issue 4): on/off
throughput >= 0.95; a filtered audit query <= 200 ms at 1M events.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from certgate.api.events import EVENT_CODES  # noqa: E402
from certgate.backend.events_sqlite import SQLiteEventStore  # noqa: E402
from certgate.recording.asciicast import Header  # noqa: E402
from certgate.recording.recorder import (  # noqa: E402
    RecordingDirectory,
    RecordingWriter,
    SessionRecorder,
)
from certgate.recording.uploader import cast_chunks  # noqa: E402
from certgate.rpc.identity_files import IdentityFiles  # noqa: E402
from tests.support.cluster import Cluster, User  # noqa: E402
from tests.support.sshd import run_sshd  # noqa: E402

UNRECORDED_ROLE = """\
kind: role
metadata: {name: unrecorded}
spec:
  allow:
    logins: [root]
    node_labels: {"*": "*"}
  options: {record_session: {ssh: "off"}}
"""


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far, all threads."""
    return _cpu(Path(f"/proc/{pid}/stat"))


def loop_cpu(pid: int) -> float:
    """CPU seconds of the process's main thread: certgate's event loop, where the
    sessions are relayed (the rest is threads: recording writer, sqlite, uploads)."""
    return _cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _cpu(stat: Path) -> float:
    text = stat.read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- throughput


def text_file(path: Path, mib: int) -> int:
    """A file of printable lines (what a terminal shows), `mib` MiB; returns its size."""
    rng = random.Random(4)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_/=+()[]"
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(20, 120))) for _ in range(997)]
    block = ("\n".join(lines) + "\n").encode()
    size = mib * 1024 * 1024
    with path.open("wb") as file:
        written = 0
        while written < size:
            chunk = block[: size - written]
            file.write(chunk)
            written += len(chunk)
    return size


def ssh_config(cluster: Cluster, user: User) -> Path:
    deadline = time.monotonic() + 15
    while "node-1" not in (out := cluster.cgsh(user, "config").stdout):
        if time.monotonic() > deadline:
            raise RuntimeError("node-1 never appeared in cgsh config")
        time.sleep(0.2)
    path = user.home / "bench_ssh_config"
    path.write_text(out)
    return path


LABELS = {
    "off": "certgate, recording off",
    "on": "certgate, recording on ",
    "sshd": "OpenSSH sshd (baseline)",
}


def sshd_config(cluster: Cluster, user: User, workdir: Path, port: int, key: Path) -> Path:
    """An OpenSSH client config for the baseline: `user`'s certificate, straight to a
    stock sshd (as root) that trusts the cluster's user CA."""
    keys = user.home / "keys"
    path = workdir / "baseline_ssh_config"
    known = workdir / "baseline_known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {Path(f'{key}.pub').read_text()}")
    path.write_text(
        "Host node-1\n    HostName 127.0.0.1\n"
        f"    Port {port}\n    IdentityFile {keys / 'key'}\n"
        f"    CertificateFile {keys / 'key-cert.pub'}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n"
    )
    return path


def cat_once(config: Path, target: Path) -> float:
    """Seconds for `cat target` in a pty session on node-1 (output discarded)."""
    start = time.perf_counter()
    subprocess.run(
        ["ssh", "-F", str(config), "-tt", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
         "root@node-1", f"cat {target}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - start


def wait_uploaded(node_recordings: Path, timeout: float = 300) -> float:
    """Seconds until the node holds no recording (all sent to auth)."""
    start = time.perf_counter()
    while any(node_recordings.rglob("*.cast")):
        if time.perf_counter() - start > timeout:
            raise RuntimeError("recordings were not uploaded in time")
        time.sleep(0.05)
    return time.perf_counter() - start


async def recorder_alone(workdir: Path, source: Path, read: int = 4096) -> tuple[float, float]:
    """Loop CPU ms per MiB of a SessionRecorder fed `source` in `read`-byte pieces (what
    it adds to a session's relay), and of converting its log as the upload does."""
    data = source.read_bytes()
    reads = [data[at : at + read] for at in range(0, len(data), read)]
    directory = RecordingDirectory(workdir / "recorder-alone")
    directory.create()
    writer = RecordingWriter()
    header = Header(80, 24, time.time(), str(uuid.uuid4()), "bench", "root", "node-1")
    recorder = SessionRecorder.open(
        header, directory, writer, on_ended=lambda session_id, complete: None
    )
    start = time.thread_time()
    for n, piece in enumerate(reads):
        recorder.on_output(piece)
        if n % 16 == 0:
            await asyncio.sleep(0)  # let the flush timer run, as a relay's loop would
    recording = time.thread_time() - start
    recorder.on_end()
    await writer.drain()
    writer.close()
    start = time.thread_time()
    async for _ in cast_chunks(directory.finished(header.session_id)):
        pass
    converting = time.thread_time() - start
    mib = len(data) / 2**20
    return recording * 1000 / mib, converting * 1000 / mib


def throughput(cluster: Cluster, workdir: Path, mib: int, rounds: int) -> None:
    cluster.cgctl("create", "-f", "-", input=UNRECORDED_ROLE)
    plain = cluster.add_user("plain", roles="unrecorded")
    recorded = cluster.add_user("recorded", roles="access", logins="root")
    configs = {}
    for mode, user in (("off", plain), ("on", recorded)):
        cluster.login(user)
        configs[mode] = ssh_config(cluster, user)
    user_ca = cluster.cgctl("auth", "export", "--type=user").stdout
    with run_sshd(workdir / "sshd", user_ca, extra_config="LogLevel ERROR") as sshd:
        key = workdir / "sshd" / "ssh_host_ed25519_key"
        configs["sshd"] = sshd_config(cluster, plain, workdir, sshd.port, key)
        _throughput(cluster, workdir, mib, rounds, configs)


def _throughput(
    cluster: Cluster, workdir: Path, mib: int, rounds: int, configs: dict[str, Path]
) -> None:
    target = workdir / "big.txt"
    size = text_file(target, mib)
    node_recordings = cluster.data_dir / "node" / "recordings"
    print(f"\n== throughput: cat of a {mib} MiB text file in a pty session, {rounds} rounds")
    recording, converting = asyncio.run(recorder_alone(workdir, target))
    print(
        f"  the recorder alone, 4 KiB reads: {recording:.2f} ms/MiB of loop CPU in the session,"
        f" {converting:.2f} ms/MiB converting to asciicast at upload"
    )
    for config in configs.values():
        cat_once(config, target)  # warm: page cache, first connection
    wait_uploaded(node_recordings)
    modes = ["off", "on", "sshd"]
    speeds: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    loop: dict[str, list[float]] = {mode: [] for mode in modes}
    uploads: list[float] = []
    assert cluster.process is not None
    pid = cluster.process.pid
    for round_ in range(rounds):
        # Rotate which mode goes first, so drift in the machine's load favours none.
        for mode in modes[round_ % 3 :] + modes[: round_ % 3]:
            before, loop_before = process_cpu(pid), loop_cpu(pid)
            seconds = cat_once(configs[mode], target)
            cpu[mode].append((process_cpu(pid) - before) / (size / 2**20))
            loop[mode].append((loop_cpu(pid) - loop_before) / (size / 2**20))
            speeds[mode].append(size / seconds / 2**20)
            if mode == "on":
                uploads.append(wait_uploaded(node_recordings))
            print(
                f"  round {round_ + 1} {LABELS[mode]}: {speeds[mode][-1]:7.1f} MiB/s,"
                f" certgate CPU {ms(cpu[mode][-1])}/MiB (event loop {ms(loop[mode][-1])})"
            )
    for mode in modes:
        print(
            f"  {LABELS[mode]}: best {max(speeds[mode]):7.1f} MiB/s,"
            f" median {statistics.median(speeds[mode]):7.1f} MiB/s,"
            f" certgate CPU median {ms(statistics.median(cpu[mode]))}/MiB"
            f" (event loop {ms(statistics.median(loop[mode]))})"
        )
    median = {mode: statistics.median(speeds[mode]) for mode in modes}
    print(f"  on/off (medians): {median['on'] / median['off']:.3f}   (target >= 0.95)")
    off, on = median["off"] / median["sshd"], median["on"] / median["sshd"]
    print(f"  against OpenSSH sshd (direct, no recording): off {off:.2f}x, on {on:.2f}x")
    stored = sorted(
        (cluster.data_dir / "recordings").glob("*.cast"), key=lambda p: p.stat().st_mtime
    )
    if stored:
        print(
            f"  a recording of the {mib} MiB cat: {stored[-1].stat().st_size / 2**20:.1f} MiB;"
            f" upload after the session: median {statistics.median(uploads):.2f} s"
        )


# ---------------------------------------------------------------------------- audit


EVENT_MIX = [
    ("cert.create", 20),
    ("user.login", 10),
    ("session.start", 15),
    ("session.end", 15),
    ("exec", 20),
    ("session.upload", 10),
    ("port_forward", 4),
    ("user.login.failure", 3),
    ("session.rejected", 2),
    ("lock.created", 1),
]


def synthetic_events(count: int, end: datetime) -> list[dict[str, Any]]:
    rng = random.Random(7)
    kinds = [k for k, _ in EVENT_MIX]
    weights = [w for _, w in EVENT_MIX]
    span = timedelta(days=30).total_seconds()
    events = []
    for n in range(count):
        kind = rng.choices(kinds, weights)[0]
        when = end - timedelta(seconds=span * (count - n) / count)
        event: dict[str, Any] = {
            "event": kind,
            "code": EVENT_CODES[kind],
            "time": when.isoformat(),
            "uid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user": f"user-{rng.randrange(200)}",
        }
        if kind.startswith(("session", "exec", "port")):
            event["node"] = f"node-{rng.randrange(500)}"
            event["login"] = "root"
            event["session_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        events.append(event)
    return events


async def load_events(path: Path, count: int) -> float:
    store = await SQLiteEventStore.open(path)
    try:
        events = synthetic_events(count, datetime.now(UTC) - timedelta(minutes=1))
        start = time.perf_counter()
        for offset in range(0, count, 10_000):
            await store.append_many(events[offset : offset + 10_000])
        return time.perf_counter() - start
    finally:
        await store.close()


def queries(now: datetime) -> list[tuple[str, dict[str, str]]]:
    day = (now - timedelta(days=1)).isoformat()
    week = (now - timedelta(days=7)).isoformat()
    return [
        ("newest 100, no filter", {"limit": "100"}),
        ("one user, last 24h", {"user": "user-42", "since": day, "limit": "100"}),
        ("one node, last 7 days", {"node": "node-7", "since": week, "limit": "100"}),
        ("session.start, last 24h", {"event": "session.start", "since": day, "limit": "100"}),
        (
            "user + node + 2 types, 7 days",
            {
                "user": "user-42",
                "node": "node-7",
                "event": "session.start,session.end",
                "since": week,
                "limit": "100",
            },
        ),
        ("rare type (lock.created), all time", {"event": "lock.created", "limit": "100"}),
        ("one user, 1000 a page", {"user": "user-42", "limit": "1000"}),
    ]


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    fn()  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


async def store_latencies(path: Path, repeat: int) -> dict[str, list[float]]:
    store = await SQLiteEventStore.open(path)
    results: dict[str, list[float]] = {}
    try:
        for name, params in queries(datetime.now(UTC)):
            kwargs: dict[str, Any] = {
                "since": datetime.fromisoformat(params["since"]) if "since" in params else None,
                "until": None,
                "event_types": params["event"].split(",") if "event" in params else (),
                "user": params.get("user"),
                "node": params.get("node"),
                "limit": int(params["limit"]),
            }
            times = []
            await store.search(**kwargs)
            for _ in range(repeat):
                start = time.perf_counter()
                await store.search(**kwargs)
                times.append(time.perf_counter() - start)
            results[name] = times
    finally:
        await store.close()
    return results


def api_latencies(cluster: Cluster, repeat: int) -> dict[str, list[float]]:
    admin = IdentityFiles.load(cluster.data_dir / "admin")
    results: dict[str, list[float]] = {}
    with httpx.Client(
        base_url=f"https://{cluster.auth_addr}", verify=admin.tls_context(), timeout=60
    ) as client:
        for name, params in queries(datetime.now(UTC)):

            def call(params: dict[str, str] = params) -> None:
                response = client.get("/v1/events", params=params)
                response.raise_for_status()

            results[name] = timed(call, repeat)
    return results


def audit(cluster: Cluster, count: int, repeat: int) -> None:
    print(f"\n== audit search at {count:,} stored events")
    path = cluster.data_dir / "events.db"
    seconds = asyncio.run(load_events(path, count))
    print(f"  bulk load: {seconds:.1f} s ({count / seconds:,.0f} events/s, append_many)")
    files = [path, path.with_name(path.name + "-wal")]
    stored = sum(f.stat().st_size for f in files if f.exists())
    print(f"  events.db (with its WAL): {stored / 2**20:.0f} MiB")
    at_store = asyncio.run(store_latencies(path, repeat))
    via_api = api_latencies(cluster, repeat)
    width = max(len(name) for name in at_store)
    print(f"  {'query':{width}}   store median / p95      auth API median / p95")
    for name in at_store:
        s, a = at_store[name], via_api[name]
        print(
            f"  {name:{width}}   {ms(statistics.median(s)):>9} / {ms(percentile(s, 0.95)):>9}"
            f"   {ms(statistics.median(a)):>9} / {ms(percentile(a, 0.95)):>9}"
        )
    worst = max(statistics.median(v) for v in via_api.values())
    print(f"  slowest filtered query through the API (median): {ms(worst)}   (target <= 200 ms)")


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-audit", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the node runs sessions as the login root")
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="cg-bench-rec-") as tmp:
        workdir = Path(tmp)
        cluster = Cluster(workdir / "cluster", roles="auth,proxy,node")
        cluster.start()
        try:
            if not args.skip_throughput:
                throughput(cluster, workdir, args.mib, args.rounds)
            if not args.skip_audit:
                audit(cluster, args.events, args.queries)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
