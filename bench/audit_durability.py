"""Audit durability: what the on-disk spool costs sessions, and what it saves.

    .venv/bin/python bench/audit_durability.py [--sessions 150] [--rounds 4] [--concurrency 4]
                                               [--load-sessions 120] [--backlog 10000]
                                               [--skip-rate] [--skip-restart] [--skip-drain]

Every part runs against one real cluster (`certgate start --roles auth,proxy` in a
temporary directory), which stores what the spools deliver.

1. Sessions per second, spool vs memory queue, in the same run: two node SSH servers in
   this process (`NodeSSHServer`, as `certgate start --roles node` runs it) on one event
   loop thread: one with the durable `AuditSpool` (every event fsynced to disk before it
   is sent), one with the in-memory queue it replaced (`MemoryAuditQueue`). Both deliver
   to the cluster's auth with a joined node's identity. Stock OpenSSH clients run
   `--sessions` `true` sessions per round, `--concurrency` at a time, as a Unix user;
   rounds alternate which server goes first. Figures: sessions/s of each round, the
   medians, and their ratio (spool / memory).
2. Events lost across an auth restart under load: a node process (`certgate start
   --roles node`); clients run `--load-sessions` sessions straight to it while the auth
   process is killed (SIGKILL) a third of the way in and started again; then the
   session.start events of those sessions in the audit log: lost (target 0) and stored
   twice (target 0), and how long after the last session the last one arrived.
3. Backlog drain: auth stopped (SIGSTOP); `--backlog` events put into a spool (this
   process, the node's identity) and written to disk; auth continued: how long until
   auth has acknowledged every event, and events/s.

Figures are printed, never asserted (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402

from certgate.api.identity import Identity  # noqa: E402
from certgate.auth.ca import CASigner, generate_authority  # noqa: E402
from certgate.node.sshd import NodeSSHServer  # noqa: E402
from certgate.rpc.audit import post_events  # noqa: E402
from certgate.rpc.audit_spool import AuditSpool  # noqa: E402
from certgate.rpc.auth_client import AsyncAuthClient  # noqa: E402
from certgate.rpc.identity_files import IdentityFiles  # noqa: E402
from certgate.srv.audit_queue import MemoryAuditQueue  # noqa: E402
from certgate.srv.session import SessionPolicy  # noqa: E402
from tests.support.cluster import Cluster, User  # noqa: E402
from tests.support.unix import ensure_user  # noqa: E402

T = TypeVar("T")
LOGIN = "cgbench"
ROLE = f"""\
kind: role
metadata: {{name: bench}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
"""


class Loop:
    """An event loop on its own thread (the servers' side), driven from this one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="bench-servers", daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def ssh_argv(key: Path, cert: Path, port: int, *command: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(key), "-o", f"CertificateFile={cert}",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-p", str(port), f"{LOGIN}@127.0.0.1", *command,
    ]  # fmt: skip


def run_sessions(argv_for: Callable[[int], list[str]], count: int, concurrency: int) -> float:
    """Run `count` sessions, `concurrency` at a time; sessions per second."""

    def one(n: int) -> None:
        result = subprocess.run(argv_for(n), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"session {n} failed: {result.stderr.strip()}")

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    return count / (time.monotonic() - started)


# 1 ---------------------------------------------------------------------------------------


def bench_rate(cluster: Cluster, node: IdentityFiles, args: argparse.Namespace, tmp: Path) -> None:
    print(f"\n1. sessions/s, {args.sessions} `true` sessions a round, {args.concurrency} at a time")
    now = datetime.now(UTC)
    user_authority = generate_authority("user_ssh", "bench.example", now)
    user_ca = CASigner(user_authority)
    host_ca = CASigner(generate_authority("host_ssh", "bench.example", now))
    host_key = ed25519.Ed25519PrivateKey.generate()
    host_public = host_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    host_cert = host_ca.sign_host_ssh(
        host_public.decode(), "bench", ["127.0.0.1"], now + timedelta(hours=2)
    )
    host_pem = host_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    user_key = ec.generate_private_key(ec.SECP256R1())
    key_path, cert_path = tmp / "user", tmp / "user-cert.pub"
    key_path.write_bytes(
        user_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    identity = Identity(
        username="bencher", roles=("bench",), logins=(LOGIN,), expires=now + timedelta(hours=2)
    )
    user_public = user_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    cert_path.write_text(
        user_ca.sign_user_ssh(
            user_public.decode(),
            identity,
            now - timedelta(minutes=5),
            now + timedelta(hours=2),
            permit_port_forwarding=False,
            permit_agent_forwarding=False,
        )
        + "\n"
    )
    user_ca_lines = [key.public for key in user_authority.spec.active_keys]

    async def authorize(identity: Identity, login: str, client_addr: str) -> SessionPolicy:
        return SessionPolicy(port_forwarding=False, forward_agent=False)

    loop = Loop()

    writers: dict[str, Any] = {}

    async def build() -> tuple[dict[str, int], list[Any], list[Any]]:
        client = AsyncAuthClient(f"https://{cluster.auth_addr}", node.tls_context())
        send = post_events(client)
        spool = AuditSpool(tmp / "spool", send, "bench spool")
        await spool.start()

        async def one(event: str, fields: dict[str, Any]) -> None:
            await send([{"event": event, "fields": fields}])

        async def many(events: list[tuple[str, dict[str, Any]]]) -> None:
            await send([{"event": e, "fields": f} for e, f in events])

        memory = MemoryAuditQueue(one, "bench memory", many)
        ports: dict[str, int] = {}
        servers = []
        writers.update(spool=spool, memory=memory)
        for name, writer in writers.items():
            server = NodeSSHServer(
                host_pem, host_cert, lambda: user_ca_lines, authorize, writer, "bench"
            )
            ports[name] = await server.start("127.0.0.1", 0)
            servers.append(server)
        return ports, servers, [client]

    ports, servers, clients = loop.run(build())
    rates: dict[str, list[float]] = {"spool": [], "memory": []}
    for round_ in range(args.rounds):
        order = ["spool", "memory"] if round_ % 2 == 0 else ["memory", "spool"]
        for name in order:
            argv = ssh_argv(key_path, cert_path, ports[name], "true")

            def same(n: int, argv: list[str] = argv) -> list[str]:
                return argv

            rate = run_sessions(same, args.sessions, args.concurrency)
            rates[name].append(rate)
            print(f"   round {round_ + 1} {name:>6}: {rate:6.1f} sessions/s")
    spool_median = statistics.median(rates["spool"])
    memory_median = statistics.median(rates["memory"])
    print(f"   median: spool {spool_median:.1f}/s, memory queue {memory_median:.1f}/s")
    print(f"   ratio spool/memory: {spool_median / memory_median:.3f}")

    async def put_cost(writer: Any, count: int = 10_000) -> float:
        """Microseconds a session's event loop spends per put()."""
        fields = {"session_id": "s", "user": "bencher", "login": LOGIN, "kind": "exec"}
        started = time.perf_counter()
        for n in range(count):
            writer.put("exec", {**fields, "command": f"put {n}", "exit_code": 0})
        return (time.perf_counter() - started) / count * 1e6

    spool_put = loop.run(put_cost(writers["spool"]))
    memory_put = loop.run(put_cost(writers["memory"]))
    print(f"   put() on the event loop: spool {spool_put:.1f} us, memory queue {memory_put:.1f} us")

    async def close() -> None:
        for server in servers:
            await server.close()
        for client in clients:
            await client.close()

    loop.run(close())


# 2 ---------------------------------------------------------------------------------------


def session_starts(cluster: Cluster, node: str, marker: str) -> list[dict[str, Any]]:
    out = cluster.cgctl(
        "audit", "ls", "--event=session.start", f"--node={node}", "--since=2h",
        "--format=json", "--limit=10000",
    ).stdout  # fmt: skip
    return [e for e in json.loads(out) if marker in str(e.get("command", ""))]


def bench_restart(cluster: Cluster, user: User, port: int, args: argparse.Namespace) -> None:
    count = args.load_sessions
    print(f"\n2. auth killed and restarted during {count} sessions on a node process")
    keys = user.home / "keys"
    marker = f"load-{time.monotonic_ns()}"
    assert cluster.process is not None
    killed = threading.Event()

    def argv(n: int) -> list[str]:
        if n == count // 3 and not killed.is_set():
            killed.set()
            assert cluster.process is not None
            cluster.process.kill()
            cluster.process.wait()
            threading.Thread(target=cluster.start, name="auth restart").start()
        return ssh_argv(keys / "key", keys / "key-cert.pub", port, f"echo {marker}-{n}")

    rate = run_sessions(argv, count, args.concurrency)
    finished = time.monotonic()
    print(f"   {count} sessions ran at {rate:.1f}/s while auth was killed and restarted")
    deadline = finished + 180
    while True:
        try:
            found = session_starts(cluster, "bench-node", marker)
        except AssertionError:
            found = []  # auth still starting
        if len({e["command"] for e in found}) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    arrived = time.monotonic() - finished
    unique = {e["command"] for e in found}
    print(f"   stored: {len(unique)} of {count} sessions' session.start")
    print(f"   lost: {count - len(unique)} (target 0); stored twice: {len(found) - len(unique)}")
    print(f"   last event stored {arrived:.1f} s after the last session")


# 3 ---------------------------------------------------------------------------------------


def bench_drain(cluster: Cluster, node: IdentityFiles, args: argparse.Namespace, tmp: Path) -> None:
    total = args.backlog
    print(f"\n3. draining a backlog of {total:,} events after auth returns")
    assert cluster.process is not None
    loop = Loop()
    client = AsyncAuthClient(f"https://{cluster.auth_addr}", node.tls_context())
    spool = AuditSpool(tmp / "drain-spool", post_events(client), "bench drain")
    marker = f"drain-{time.monotonic_ns()}"
    loop.run(spool.start())
    os.kill(cluster.process.pid, signal.SIGSTOP)
    try:

        async def fill() -> float:
            started = time.monotonic()
            for n in range(total):
                spool.put("exec", {"user": marker, "command": f"step {n}", "exit_code": 0})
            while spool._buffer or spool._writing:
                await asyncio.sleep(0.01)
            return time.monotonic() - started

        seconds = loop.run(fill())
        print(f"   {total:,} events put and on disk in {seconds:.2f} s ({spool.backlog:,} bytes)")
    finally:
        os.kill(cluster.process.pid, signal.SIGCONT)
    started = time.monotonic()

    async def drained() -> None:
        while spool.backlog:
            await asyncio.sleep(0.01)

    loop.run(drained(), timeout=600)
    seconds = time.monotonic() - started
    print(f"   drained in {seconds:.2f} s after auth continued ({total / seconds:,.0f} events/s)")
    out = cluster.cgctl(
        "audit", "ls", "--event=exec", f"--user={marker}", "--since=2h", "--format=json",
        "--limit=10000",
    ).stdout  # fmt: skip
    stored = json.loads(out)
    print(f"   stored: {len({e['command'] for e in stored}):,} distinct of {total:,}")

    async def close() -> None:
        await spool.close()
        await client.close()

    loop.run(close())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--load-sessions", type=int, default=120)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--skip-drain", action="store_true")
    args = parser.parse_args()
    ensure_user(LOGIN)
    with tempfile.TemporaryDirectory(prefix="certgate-audit-bench-") as directory:
        tmp = Path(directory)
        cluster = Cluster(tmp / "cluster", roles="auth,proxy")
        cluster.start()
        try:
            cluster.cgctl("create", "-f", "-", input=ROLE)
            _, port = cluster.start_node("bench-node", "env=bench")
            node = IdentityFiles.load(cluster.workdir / "bench-node" / "identity" / "node")
            user = cluster.add_user("bencher", roles="bench")
            cluster.login(user)
            print(f"cluster in {tmp}; {os.cpu_count()} cores")
            if not args.skip_rate:
                bench_rate(cluster, node, args, tmp)
            if not args.skip_restart:
                bench_restart(cluster, user, port, args)
            if not args.skip_drain:
                bench_drain(cluster, node, args, tmp)
        finally:
            if cluster.process is not None and cluster.process.poll() is None:
                os.kill(cluster.process.pid, signal.SIGCONT)
            cluster.stop()


if __name__ == "__main__":
    main()
