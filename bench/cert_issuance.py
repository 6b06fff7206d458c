"""Certificates signed per second through the auth API, and login latency.

    .venv/bin/python bench/cert_issuance.py [--seconds 10] [--concurrency 32]
                                            [--clients 1] [--auth-workers N] [--logins 30]

What it does, all in one run on this machine:

1. OpenSSH baseline: `ssh-keygen -s` signing one user certificate (Ed25519 CA, ECDSA
   key, the kinds certgate uses), one process per certificate as the tool is used, one
   at a time and then one per core.
2. Starts a real cluster (`certgate start --roles auth,proxy`) in a temporary directory,
   adds a user through cgctl and the invite API, and logs it in with cgsh.
3. Renewals: load-generator processes (spawned, so their CPU shows up apart from the
   server's) keep `--concurrency` requests in flight over keep-alive mTLS connections,
   each `POST /v1/certs/renew` on the auth API with the user's own certificate, for a
   fresh public key (from a pool made beforehand) and a 1h TTL. Every request runs the
   full path: client certificate, user and roles read from the store, both certificates
   signed, a `cert.create` audit event committed. After `--warmup` seconds, requests
   finishing in the next `--seconds` are counted. CPU time is read from /proc for the
   server's processes and from each load generator.
4. Logins: `--logins` password + one-time-code logins through the proxy
   (`POST /v1/login`), one at a time on an otherwise idle cluster, each on a new TLS
   connection as `cgsh login` makes it. A code is good once per user and 30 s step, so
   the logins are spread over several users (two codes each right after the invite).
   argon2id is most of each login; its cost alone is printed next to it.

Figures are printed, never asserted (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from certgate.api.certs import generate_private_key, public_key_openssh  # noqa: E402
from tests.support.cluster import PASSWORD, Cluster, User  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (seconds in, seconds out)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def process_tree_cpu(root_pid: int) -> float:
    """CPU seconds (user + system) used so far by `root_pid` and all its descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return sum(cpu.get(pid, 0.0) for pid in tree)


def machine_cpu() -> float:
    """CPU seconds spent by the whole machine (every core, not idle) so far."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


# ---------------------------------------------------------------------------- OpenSSH


@dataclass
class Baseline:
    one_at_a_time: float  # certificates per second, sequential
    all_cores: float  # certificates per second, one ssh-keygen per core at once
    per_cert: float  # seconds per certificate, sequential


def openssh_baseline(workdir: Path, count: int, cores: int) -> Baseline:
    """`ssh-keygen -s` signing user certificates, the way OpenSSH's CA tool is used."""
    workdir.mkdir(parents=True)
    ca = workdir / "ca"
    keygen = ["ssh-keygen", "-q", "-N", ""]
    subprocess.run([*keygen, "-t", "ed25519", "-f", str(ca)], check=True)
    for lane in range(cores):
        subprocess.run([*keygen, "-t", "ecdsa", "-b", "256", "-f", str(workdir / f"u{lane}")])

    def sign(lane: int, serial: int) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(ca), "-I", "bench", "-n", "ubuntu",
             "-V", "+1h", "-z", str(serial), str(workdir / f"u{lane}.pub")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    sign(0, 0)  # page cache warm
    start = time.perf_counter()
    for serial in range(count):
        sign(0, serial)
    sequential = time.perf_counter() - start

    def lane_run(lane: int) -> None:
        for serial in range(count):
            sign(lane, serial)

    start = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lane_run, range(cores)))
    parallel = time.perf_counter() - start
    return Baseline(count / sequential, count * cores / parallel, sequential / count)


# ---------------------------------------------------------------------------- signing alone


def signing_cost(rounds: int = 300) -> float:
    """Seconds of CPU to sign one SSH + X.509 pair with certgate's CASigner, no I/O."""
    from certgate.api.identity import Identity
    from certgate.auth.ca import CASigner, generate_authority

    now = datetime.now(UTC)
    ssh_ca = CASigner(generate_authority("user_ssh", "bench", now))
    tls_ca = CASigner(generate_authority("user_tls", "bench", now))
    identity = Identity(
        username="bench",
        roles=("access", "editor", "auditor"),
        traits={"logins": ["ubuntu"]},
        logins=("ubuntu",),
        expires=now + timedelta(hours=1),
    )
    keys = [generate_private_key().public_key() for _ in range(16)]
    start = time.process_time()
    for i in range(rounds):
        key = keys[i % len(keys)]
        ssh_ca.sign_user_ssh(
            key, identity, now, identity.expires,
            permit_port_forwarding=True, permit_agent_forwarding=False,
        )  # fmt: skip
        tls_ca.sign_tls(key, identity, now, identity.expires)
    return (time.process_time() - start) / rounds


def argon2_cost(rounds: int = 5) -> float:
    """Seconds to verify one password with the server's argon2id parameters."""
    from certgate.auth.passwords import _hasher

    stored = _hasher.hash(PASSWORD)
    start = time.perf_counter()
    for _ in range(rounds):
        _hasher.verify(stored, PASSWORD)
    return (time.perf_counter() - start) / rounds


# ---------------------------------------------------------------------------- renewals


@dataclass
class LoadPlan:
    url: str
    keys_dir: str
    public_keys: list[str]
    concurrency: int
    measure_from: float  # time.monotonic() values; CLOCK_MONOTONIC is machine-wide
    measure_until: float


def load_generator(plan: LoadPlan, results: Any) -> None:
    """One load-generator process: `plan.concurrency` keep-alive connections."""
    try:
        results.put(asyncio.run(_drive(plan)))
    except BaseException as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


async def _drive(plan: LoadPlan) -> dict[str, Any]:
    import aiohttp

    from certgate.transport import client_context

    keys = Path(plan.keys_dir)
    context = client_context(
        [(keys / "cas.pem").read_text()],
        (keys / "tls.crt").read_text(),
        (keys / "key.pem").read_text(),
    )
    bodies = [json.dumps({"public_key": k, "ttl": "1h"}).encode() for k in plan.public_keys]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    checked = 0
    cpu: dict[str, float] = {}

    connector = aiohttp.TCPConnector(ssl=context, limit=plan.concurrency, force_close=False)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def lane(index: int) -> None:
            nonlocal checked
            n = index
            while True:
                now = time.monotonic()
                if now >= plan.measure_until:
                    return
                body = bodies[n % len(bodies)]
                n += plan.concurrency
                start = time.perf_counter()
                try:
                    async with session.post(plan.url, data=body) as response:
                        data = await response.read()
                        status = response.status
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    status, data = 0, type(exc).__name__.encode()
                elapsed = time.perf_counter() - start
                finished = time.monotonic()
                if not plan.measure_from <= finished < plan.measure_until:
                    continue  # warm-up, or past the window
                if status != 200:
                    key = f"{status} {data[:120].decode(errors='replace')}"
                    errors[key] = errors.get(key, 0) + 1
                    continue
                if n % 97 == 0:  # look inside an answer now and then
                    answer = json.loads(data)
                    assert answer["ssh_cert"].startswith("ecdsa-sha2-nistp256-cert-v01@openssh")
                    assert answer["tls_cert"].startswith("-----BEGIN CERTIFICATE-----")
                    checked += 1
                latencies.append(elapsed)

        async def cpu_marks() -> None:
            await asyncio.sleep(max(0.0, plan.measure_from - time.monotonic()))
            cpu["from"] = time.process_time()
            await asyncio.sleep(max(0.0, plan.measure_until - time.monotonic()))
            cpu["until"] = time.process_time()

        await asyncio.gather(cpu_marks(), *(lane(i) for i in range(plan.concurrency)))
    return {
        "latencies": latencies,
        "errors": errors,
        "checked": checked,
        "cpu": cpu["until"] - cpu["from"],
    }


@dataclass
class RenewalResult:
    pairs: int
    seconds: float
    latencies: list[float]
    errors: dict[str, int]
    server_cpu: float
    client_cpu: float
    machine_cpu: float


def run_renewals(
    cluster: Cluster,
    user: User,
    concurrency: int,
    clients: int,
    warmup: float,
    seconds: float,
    profile: Path | None = None,
) -> RenewalResult:
    assert cluster.process is not None
    public_keys = [public_key_openssh(generate_private_key()) for _ in range(256)]
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    start = time.monotonic() + 3.0  # time for the generators to start
    measure_from = start + warmup
    measure_until = measure_from + seconds
    lanes = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    processes = []
    for share in lanes:
        plan = LoadPlan(
            url=f"https://{cluster.auth_addr}/v1/certs/renew",
            keys_dir=str(user.home / "keys"),
            public_keys=public_keys,
            concurrency=share,
            measure_from=measure_from,
            measure_until=measure_until,
        )
        process = spawn.Process(target=load_generator, args=(plan, results), daemon=True)
        process.start()
        processes.append(process)

    time.sleep(max(0.0, measure_from - time.monotonic()))
    server_from, machine_from = process_tree_cpu(cluster.process.pid), machine_cpu()
    spy = None
    if profile is not None:
        # Sampling profiler over the server's processes: collapsed stacks for
        # flamegraph.pl or speedscope. Its own CPU counts as "everything else".
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--subprocesses", "--gil",
             "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(profile),
             "-d", str(int(seconds)), "-p", str(cluster.process.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    time.sleep(max(0.0, measure_until - time.monotonic()))
    server_until, machine_until = process_tree_cpu(cluster.process.pid), machine_cpu()
    if spy is not None:
        spy.wait(timeout=60)

    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
    failed = [o["error"] for o in outcomes if "error" in o]
    if failed:
        raise RuntimeError(f"load generator failed: {failed[0]}")
    latencies = [x for o in outcomes for x in o["latencies"]]
    errors: dict[str, int] = {}
    for outcome in outcomes:
        for key, count in outcome["errors"].items():
            errors[key] = errors.get(key, 0) + count
    return RenewalResult(
        pairs=len(latencies),
        seconds=seconds,
        latencies=latencies,
        errors=errors,
        server_cpu=server_until - server_from,
        client_cpu=sum(o["cpu"] for o in outcomes),
        machine_cpu=machine_until - machine_from,
    )


# ---------------------------------------------------------------------------- logins


def add_user(cluster: Cluster, name: str, **options: str) -> User:
    """Cluster.add_user, again under another name if the invite's one-time code missed
    its 30 s window (the harness's first code is the previous step's; on a loaded
    machine the request can cross a step boundary)."""
    for attempt in range(3):
        try:
            return cluster.add_user(f"{name}-{attempt}" if attempt else name, **options)
        except AssertionError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def make_users(cluster: Cluster, count: int) -> list[User]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda i: add_user(cluster, f"login-{i}"), range(count)))


def run_logins(cluster: Cluster, users: list[User], count: int) -> list[float]:
    """`count` logins, one at a time, each on a new connection, users taken in turn."""
    public_key = public_key_openssh(generate_private_key())
    latencies: list[float] = []
    for i in range(count):
        user = users[i % len(users)]
        body = {
            "user": user.name,
            "password": user.password,
            "otp": user.otp.next_code(),  # waits for the next 30 s step when used up
            "public_key": public_key,
        }
        start = time.perf_counter()
        with httpx.Client(verify=False, timeout=30) as client:
            response = client.post(f"https://{cluster.proxy_addr}/v1/login", json=body)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"login {i} failed: {response.status_code} {response.text}")
        latencies.append(elapsed)
    return latencies


# ---------------------------------------------------------------------------- profile

# Where a sample of the server goes: the first rule that names any frame of its stack
# (so the order runs from the most to the least specific). py-spy frames read
# "function (path/file.py:line)".
PROFILE_RULES = (
    ("signing: X.509 (cryptography)", ("sign_tls",)),
    ("signing: SSH (ours + Ed25519)", ("sign_user_ssh",)),
    ("client key parsing", ("load_ssh_public_key_text",)),
    ("audit log", ("certgate/services/audit.py", "events_sqlite.py")),
    ("store reads", ("certgate/backend/",)),
    ("JSON", ("json/",)),
    ("metrics", ("prometheus_client/",)),
    ("certgate request logic", ("certgate/",)),
    ("HTTP + TLS (aiohttp, ssl)", ("aiohttp/", "ssl.py", "sslproto.py", "selector_events.py")),
    ("event loop, threads", ("asyncio/", "threading.py", "concurrent/", "selectors.py")),
)


def profile_summary(path: Path) -> list[tuple[str, float]]:
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")[1:]
        # Below the event loop's callback frame: the loop itself and the daemon's
        # start-up frames under it (certgate's too) say nothing about the work.
        runs = [i for i, frame in enumerate(frames) if frame.startswith("Handle._run ")]
        if runs:
            frames = frames[runs[-1] + 1 :] or ["event loop (asyncio/)"]
        category = next(
            (name for name, marks in PROFILE_RULES if any(m in f for f in frames for m in marks)),
            "other",
        )
        counts[category] = counts.get(category, 0) + int(number)
        total += int(number)
    return sorted(((name, n / total) for name, n in counts.items()), key=lambda x: -x[1])


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="measured renewal time")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured renewal time first")
    parser.add_argument("--concurrency", type=int, default=32, help="renewals in flight")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--auth-workers", type=int, default=0,
        help="auth_service.workers: processes serving the auth API (0: one per core; "
        "certgate's own default is 1)",
    )  # fmt: skip
    parser.add_argument("--logins", type=int, default=30, help="logins to time (0: none)")
    parser.add_argument("--keygen-runs", type=int, default=50, help="ssh-keygen signings")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile", type=Path, default=None,
        help="write py-spy collapsed stacks of the server here (pip install py-spy)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1

    tmp = Path(tempfile.mkdtemp(prefix="certgate-bench-"))
    print(f"cores: {cores}    python {sys.version.split()[0]}    workdir {tmp}", flush=True)
    baseline = openssh_baseline(tmp / "openssh", args.keygen_runs, cores)
    signing = signing_cost()

    extra = ["--first-admin", "admin"]
    if args.auth_workers != 1:  # 1 is certgate's default: no config file needed
        config = tmp / "certgate.yaml"
        config.write_text(f"version: v1\nauth_service:\n  workers: {args.auth_workers}\n")
        extra += ["--config", str(config)]
    auth_processes = args.auth_workers or cores
    cluster = Cluster(tmp / "cluster", cluster_name="bench", extra_args=extra)
    cluster.start()
    try:
        renewer = add_user(cluster, "bench-renew", roles="access,editor,auditor", logins="ubuntu")
        cluster.login(renewer)
        login_users = make_users(cluster, math.ceil(args.logins / 2)) if args.logins else []
        renewal = run_renewals(
            cluster, renewer, args.concurrency, args.clients, args.warmup, args.seconds,
            args.profile,
        )  # fmt: skip
        logins = run_logins(cluster, login_users, args.logins) if args.logins else []
        argon2 = argon2_cost()  # right after the logins, on the same machine load
    finally:
        cluster.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)

    rate = renewal.pairs / renewal.seconds
    wall = renewal.seconds
    print()
    print(f"cores                      {cores}")
    per_core = " = one per core" if not args.auth_workers else ""
    print(
        f"auth processes             {auth_processes} "
        f"(auth_service.workers: {args.auth_workers}{per_core})"
    )
    print(
        f"renewals                   {rate:,.0f} certificate pairs/s "
        f"(SSH + X.509; {renewal.pairs} in {wall:.0f} s, concurrency {args.concurrency}, "
        f"{args.clients} load-generator process(es))"
    )
    if renewal.errors:
        print(f"  errors                   {sum(renewal.errors.values())}: {renewal.errors}")
    print(
        f"renewal latency            p50 {ms(percentile(renewal.latencies, 0.50))}    "
        f"p99 {ms(percentile(renewal.latencies, 0.99))}"
    )
    if logins:
        print(
            f"login latency              p50 {ms(percentile(logins, 0.50))}    "
            f"p99 {ms(percentile(logins, 0.99))}    ({len(logins)} sequential logins through "
            f"the proxy, new connection each; argon2id verify alone {ms(argon2)})"
        )
    per_pair = 1e6 / max(renewal.pairs, 1)
    idle = cores * wall - renewal.machine_cpu
    print("where the CPU goes         (core-seconds over the measured window)")
    print(
        f"  certgate (auth + proxy)  {renewal.server_cpu:6.1f}  "
        f"= {renewal.server_cpu / wall:.2f} cores, {renewal.server_cpu * per_pair:.0f} us/pair, "
        f"of which signing alone {signing * 1e6:.0f} us/pair"
    )
    print(
        f"  load generator           {renewal.client_cpu:6.1f}  "
        f"= {renewal.client_cpu / wall:.2f} cores, {renewal.client_cpu * per_pair:.0f} us/pair"
    )
    other = renewal.machine_cpu - renewal.server_cpu - renewal.client_cpu
    print(f"  everything else          {other:6.1f}    idle {max(idle, 0.0):.1f}")
    if args.profile is not None and args.profile.exists():
        print(f"  certgate, by py-spy      (samples holding the GIL; stacks in {args.profile})")
        for name, share in profile_summary(args.profile):
            print(f"    {share:6.1%}  {name}")
    print(
        f"openssh baseline           ssh-keygen -s: {ms(baseline.per_cert)} per certificate "
        f"= {baseline.one_at_a_time:,.0f} certs/s one at a time, "
        f"{baseline.all_cores:,.0f} certs/s on {cores} cores"
    )
    print(
        f"ratio                      certgate pairs/s / ssh-keygen certs/s on {cores} cores "
        f"= {rate / baseline.all_cores:.1f}x"
    )
    target = 1000
    verdict = "meets" if rate >= target else "misses"
    print(f"target                     >= {target:,} pairs/s on 2 cores: {verdict} it here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
