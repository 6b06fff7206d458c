"""Two auth and two proxy processes on one PostgreSQL; `kill -9` of one auth (issue 13).

Real processes: auth A and auth B (`certgate start --roles auth`, one PostgreSQL schema),
proxy 1 and proxy 2 and a node, each joined with `--auth-server A,B`. After A is killed
with SIGKILL: a shell opened before it keeps working, a login through proxy 2 works, the
node's heartbeats reach B (it stays in `cgsh ls`), the audit events of a new session
arrive once, and a lock made through B ends a session held through proxy 1 (whose watch
was on A).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from tests.support.cluster import BIN, Cluster, User, cgsh_shell, run
from tests.support.net import free_port
from tests.support.postgres import PostgresServer, certgate_config
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sessions as root need root")

ROOT_ROLE = """\
kind: role
metadata: {name: root-anywhere}
spec:
  allow:
    logins: [root]
    node_labels: {"*": "*"}
"""


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    addr: str = ""  # auth: its API; proxy: its web address


def _spawn(workdir: Path, name: str, args: list[str]) -> Service:
    log = workdir / f"{name}.log"
    data_dir = workdir / name
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / "certgate"), "start", "--data-dir", str(data_dir), "--nodename", name,
             *args],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Service(process, log, data_dir)


def _wait_for(service: Service, text: str) -> None:
    def started() -> bool:
        assert service.process.poll() is None, service.log.read_text()
        return text in service.log.read_text()

    eventually(started, timeout=40)


def _stop(services: list[Service]) -> None:
    for service in services:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    for service in services:
        try:
            service.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


@dataclass
class HA:
    auth_a: Cluster  # auth A, started as the test cluster (cgctl through its admin dir)
    auth_b: Service
    proxy_1: Service
    proxy_2: Service
    node: Service
    workdir: Path

    def cgctl_b(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([str(BIN / "cgctl"), "--data-dir", str(self.auth_b.data_dir), *args],
                   check=check)  # fmt: skip

    def login(self, user: User, proxy: Service) -> None:
        self.auth_a.cgsh(
            user, "login", f"--proxy={proxy.addr}", f"--user={user.name}", "--insecure",
            f"--otp={user.otp.next_code()}", input=user.password + "\n",
        )  # fmt: skip


def _join_args(cluster: Cluster, kind: str) -> list[str]:
    out = cluster.cgctl("tokens", "add", f"--type={kind}", "--ttl=5m").stdout
    join = next(line for line in out.splitlines() if line.startswith("certgate start"))
    return join.split()[2:]  # after "certgate start"


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[HA]:
    schema = postgres_server.create_schema()
    workdir = tmp_path_factory.mktemp("failover")
    config = workdir / "certgate.yaml"
    config.write_text(certgate_config(postgres_server.conninfo(schema)))
    auth_a = Cluster(workdir / "a", roles="auth", extra_args=["--config", str(config)])
    services: list[Service] = []
    try:
        auth_a.start()
        auth_a.cgctl("create", "-f", "-", input=ROOT_ROLE)
        b_addr = f"127.0.0.1:{free_port()}"
        auth_b = _spawn(workdir, "auth-b", [
            "--config", str(config), "--roles", "auth", "--cluster-name", auth_a.cluster_name,
            "--auth-listen", b_addr, "--diag-addr", f"127.0.0.1:{free_port()}"])  # fmt: skip
        services.append(auth_b)
        auth_b.addr = b_addr
        _wait_for(auth_b, "auth service ready")
        both = f"{auth_a.auth_addr},{b_addr}"  # A first: everything starts on A

        proxies = []
        for name in ("proxy-1", "proxy-2"):
            join = _join_args(auth_a, "proxy")
            join[join.index("--auth-server") + 1] = both
            web = f"127.0.0.1:{free_port()}"
            proxy = _spawn(workdir, name, [
                *join, "--web-listen", web, "--public-addr", web,
                "--ssh-proxy-listen", f"127.0.0.1:{free_port()}",
                "--kube-proxy-listen", f"127.0.0.1:{free_port()}", "--diag-addr", ""])  # fmt: skip
            proxy.addr = web
            services.append(proxy)
            proxies.append(proxy)
        join = _join_args(auth_a, "node")
        join[join.index("--auth-server") + 1] = both
        node = _spawn(workdir, "node-ha", [
            *join, "--labels", "env=ha", "--ssh-listen", f"127.0.0.1:{free_port()}",
            "--diag-addr", "", "--heartbeat-interval", "1s"])  # fmt: skip
        services.append(node)
        for proxy in proxies:
            _wait_for(proxy, "proxy ssh listening")
        _wait_for(node, "ssh listening")
        # auth A runs no proxy: its helpers that speak to "the proxy" (invites) use proxy 1.
        auth_a.web_port = int(proxies[0].addr.rsplit(":", 1)[1])
        yield HA(auth_a, auth_b, proxies[0], proxies[1], node, workdir)
    finally:
        _stop(services)
        if auth_a.process is not None and auth_a.process.poll() is None:
            auth_a.stop()
        postgres_server.drop_schema(schema)


def _node(ha: HA) -> dict[str, Any]:
    return dict(json.loads(ha.cgctl_b("get", "node/node-ha", "--format=json").stdout))


def test_kill_9_of_one_auth_leaves_logins_heartbeats_audit_sessions_and_locks_working(
    ha: HA,
) -> None:
    bob = ha.auth_a.add_user("bob", roles="root-anywhere,auditor")
    bob_1 = replace(bob, home=ha.workdir / "homes" / "bob-1")  # a profile on proxy 1
    bob_2 = replace(bob, home=ha.workdir / "homes" / "bob-2")  # and one on proxy 2
    ha.login(bob_1, ha.proxy_1)
    shell = cgsh_shell(bob_1.home, "root@node-ha")
    try:
        # The node is heartbeating (through A, its first address).
        before = _node(ha)["metadata"]["expires"]
        eventually(lambda: _node(ha)["metadata"]["expires"] != before)

        ha.auth_a.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        ha.auth_a.process.wait()  # type: ignore[union-attr]
        killed_at = time.time()

        # The live shell does not notice: its path is client -> proxy 1 -> node.
        shell.sendline("echo STILL-$((6*7))")
        shell.expect("STILL-42")

        # A login through proxy 2 works (proxy 2 fails over to B).
        ha.login(bob_2, ha.proxy_2)

        # Heartbeats reach B: the node's presence is renewed past the kill, and it is
        # still listed well after its 1.5 s TTL would have run out without them.
        def renewed_after_kill() -> bool:
            expires = _node(ha)["metadata"]["expires"]
            return _epoch(expires) > killed_at + 3

        eventually(renewed_after_kill, timeout=20)
        listed = ha.auth_a.cgsh(bob_2, "ls", "--format=json").stdout
        assert "node-ha" in listed

        # A new session through proxy 2: its audit events reach B, once each.
        result = ha.auth_a.cgsh(bob_2, "ssh", "root@node-ha", "echo after-$((40+2))")
        assert "after-42" in result.stdout

        def ended_after_kill() -> list[dict[str, Any]]:
            events = json.loads(
                ha.cgctl_b("audit", "ls", "--user=bob", "--since=1h", "--format=json").stdout
            )
            late = [e for e in events if e["event"] == "session.end"]
            return events if any(_epoch(e["time"]) > killed_at for e in late) else []

        events = eventually(ended_after_kill, timeout=30)
        counts = Counter(e["uid"] for e in events)
        assert counts and max(counts.values()) == 1, counts
        session_ids = {
            e["session_id"]
            for e in events
            if e["event"] == "session.start" and _epoch(e["time"]) > killed_at
        }
        assert len(session_ids) == 1

        # A lock made through B ends the shell held through proxy 1 (whose watch, like
        # the node's, was on A and moved to B).
        ha.cgctl_b("lock", "--user=bob", "--message=failed over")
        shell.expect("locked: failed over")
        shell.expect(pexpect.EOF)
    finally:
        shell.close()


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
