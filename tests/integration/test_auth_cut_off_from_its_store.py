"""An auth cut off from the shared PostgreSQL store does not vouch for locks it cannot see.

Real processes: auth A (with its proxy and a node) reaches PostgreSQL through a TCP relay
the test cuts; auth B reaches it directly. While A is cut off, a lock on bob made
through B cannot reach A. A goes on pinging its watchers, but its pings say how far
behind its store it is: bob's shell, held through A's proxy and node under a
`locking_mode: strict` role, is ended once the strict grace is spent, as when auth itself
is unreachable. Before, A's pings kept the views fresh and the shell ran on. Once the
network heals, A answers bob's next login with the lock at once, not after its watch's
retry backoff.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect  # type: ignore[import-untyped]
import pytest

from tests.support.cluster import BIN, Cluster, User, cgsh_shell, run
from tests.support.ha import OtherAuth, another_auth
from tests.support.postgres import PostgresServer, certgate_config
from tests.support.tcp_relay import TcpRelay
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sessions as root need root")

STRICT_GRACE = 3.0
ROLES = """\
kind: role
metadata: {name: strict-root}
spec:
  allow:
    logins: [root]
    node_labels: {"*": "*"}
  options: {locking_mode: strict}
---
kind: role
metadata: {name: root}
spec:
  allow:
    logins: [root]
    node_labels: {"*": "*"}
"""


def _config(path: Path, conninfo: str) -> str:
    path.write_text(certgate_config(conninfo))
    return str(path)


@pytest.fixture(scope="module")
def relay(postgres_server: PostgresServer) -> Iterator[TcpRelay]:
    with TcpRelay(postgres_server.port) as relay:
        yield relay


@pytest.fixture(scope="module")
def schema(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_schema()
    yield name
    postgres_server.drop_schema(name)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    relay: TcpRelay,
    schema: str,
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cut-off")
    direct = postgres_server.conninfo(schema)
    through_relay = direct.replace(f"port={postgres_server.port}", f"port={relay.port}")
    config = _config(workdir / "auth-a.yaml", through_relay)
    c = Cluster(
        workdir,
        roles="auth,proxy,node",
        extra_args=["--config", config, "--strict-lock-grace", f"{STRICT_GRACE:g}s"],
    )
    c.start()
    c.cgctl("create", "-f", "-", input=ROLES)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def auth_b(cluster: Cluster, postgres_server: PostgresServer, schema: str) -> Iterator[OtherAuth]:
    config = _config(cluster.workdir / "auth-b.yaml", postgres_server.conninfo(schema))
    with another_auth(cluster, config) as auth:
        yield auth


@pytest.fixture(scope="module")
def bob(cluster: Cluster) -> User:
    user = cluster.add_user("bob", roles="strict-root")
    cluster.login(user)
    return user


def test_a_lock_it_cannot_see_ends_strict_sessions_and_refuses_the_next_login(
    cluster: Cluster, auth_b: OtherAuth, bob: User, relay: TcpRelay
) -> None:
    child = cgsh_shell(bob.home)
    try:
        relay.cut()
        cut_at = time.monotonic()
        run([str(BIN / "cgctl"), "--data-dir", str(auth_b.data_dir), "lock", "--user=bob",
             "--message=made through auth B"])  # fmt: skip
        # A cannot learn of the lock, and says it is behind: the strict session ends
        # as when auth is out of reach, once the grace is spent.
        child.expect("cannot confirm locks", timeout=30)
        child.expect(pexpect.EOF)
        # (the feed reads every second and counts as behind after three)
        assert time.monotonic() - cut_at < STRICT_GRACE + 15
        assert eventually(lambda: _behind(cluster) > STRICT_GRACE, timeout=10)
        assert cluster.diag("/readyz")[0] != 200  # 503, or no answer within 2 s
        # Once 10 s behind, the health check is answered at once (no store round trip).
        eventually(lambda: _behind(cluster) >= 10, timeout=20)
        asked = time.monotonic()
        status, text = cluster.diag("/readyz")
        assert status == 503 and "behind" in text, (status, text)
        assert time.monotonic() - asked < 1
        # A call that needs the store fails in one line, and the operator reads why
        # in auth's log.
        # (as the admin: a user's call may be refused first for the locks auth cannot
        # confirm, which is no store call)
        failed = run(
            [str(BIN / "cgctl"), "--data-dir", str(cluster.data_dir), "users", "ls"],
            check=False,
        )
        assert failed.returncode != 0 and "Traceback" not in failed.stderr
        assert "postgres store" in failed.stderr, failed.stderr
        # One line per 10 s however many calls fail, so it may be a node's refused
        # heartbeat's ("auth cannot reach its store") rather than this call's.
        warned = re.compile(r"WARNING certgate\.auth: .*(postgres store|cannot reach its store)")
        assert warned.search(cluster.log.read_text())
    finally:
        child.close()
        relay.heal()

    # Healed: A's first answer to bob already knows the lock made through B.
    refused = cluster.login(bob, check=False)
    assert refused.returncode != 0
    assert "locked: made through auth B" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    eventually(lambda: cluster.diag("/readyz")[0] == 200, timeout=30)
    assert _behind(cluster) == 0


def test_a_node_that_knows_both_auths_keeps_beating_through_the_one_that_serves(
    cluster: Cluster, auth_b: OtherAuth, relay: TcpRelay
) -> None:
    # node-2 joined with both auth addresses, its watch on A. A is cut off: its pings
    # say so, and the node's heartbeats go as calls, which A answers 503 and B takes.
    # Before, each beat went up A's socket and failed after A's pool timeout: the node
    # dropped out of every listing although B was there.
    _, _port = cluster.start_node(
        "node-2", "env=dev", "--auth-server", f"{cluster.auth_addr},{auth_b.addr}"
    )

    def expires() -> str:
        got = run([str(BIN / "cgctl"), "--data-dir", str(auth_b.data_dir), "get",
                   "node/node-2", "--format=json"], check=False)  # fmt: skip
        return json.loads(got.stdout)["metadata"]["expires"] if got.returncode == 0 else ""

    eventually(expires, timeout=30)
    relay.cut()
    try:
        time.sleep(20)  # A refuses beats once 10 s behind; the node has moved on by then
        seen = []
        for _ in range(3):
            time.sleep(2)
            seen.append(expires())
        assert "" not in seen, "node-2 dropped out of the listing while B was there"
        assert len(set(seen)) == 3, seen  # it beats every second, through B
    finally:
        relay.heal()


def test_a_node_that_knows_both_auths_moves_its_watch_and_learns_the_lock(
    cluster: Cluster, auth_b: OtherAuth, relay: TcpRelay
) -> None:
    # node-3 joined with both addresses, its watch on A. carol's session there is
    # best-effort (no strict role): nothing ends it for A's silence, only a lock. A
    # lock made through B while A is cut off reaches node-3 because its watch moves to
    # B once B has served one of its heartbeats (A refuses them once 10 s behind).
    # Before, the watch stayed on A, which pings on, and carol's shell ran on.
    cluster.start_node("node-3", "env=dev", "--auth-server", f"{cluster.auth_addr},{auth_b.addr}")
    carol = cluster.add_user("carol", roles="root")
    cluster.login(carol)
    child = cgsh_shell(carol.home, "root@node-3")
    try:
        relay.cut()
        cut_at = time.monotonic()
        run([str(BIN / "cgctl"), "--data-dir", str(auth_b.data_dir), "lock", "--user=carol",
             "--message=carol locked through B"])  # fmt: skip
        child.expect("carol locked through B", timeout=60)
        child.expect(pexpect.EOF)
        # 10 s until A refuses beats, a beat a second, a ping a second
        assert time.monotonic() - cut_at < 40
    finally:
        child.close()
        relay.heal()
    assert "moving the watch there" in (cluster.workdir / "node-3.log").read_text()


def _behind(cluster: Cluster) -> float:
    """certgate_store_watch_behind_seconds, from auth A's /metrics."""
    status, text = cluster.diag("/metrics")
    assert status == 200
    line = next(x for x in text.splitlines() if x.startswith("certgate_store_watch_behind"))
    return float(line.split()[-1])
