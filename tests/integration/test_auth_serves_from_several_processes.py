"""`auth_service.workers: 2`: two processes serve the auth API on one port, with every
check, one audit log and one set of metrics; a worker that dies is replaced, and none
outlives the daemon."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from certgate.api.certs import generate_private_key, public_key_openssh
from certgate.transport import client_context
from tests.support.cluster import Cluster, User


@pytest.fixture(scope="module")
def workers_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("workers")
    config = workdir / "certgate.yaml"
    config.write_text("version: v1\nauth_service:\n  workers: 2\n")
    c = Cluster(workdir, extra_args=["--config", str(config)])
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def user(workers_cluster: Cluster) -> User:
    user = workers_cluster.add_user("renewer", logins="renewer")
    workers_cluster.login(user)
    return user


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def _worker_pids(c: Cluster) -> list[int]:
    assert c.process is not None
    return [
        pid
        for pid in _children(c.process.pid)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _renew(c: Cluster, user: User, count: int) -> list[int]:
    """`count` renewals, each on a new connection (so the kernel spreads them)."""
    keys = user.home / "keys"
    context = client_context(
        [(keys / "cas.pem").read_text()],
        (keys / "tls.crt").read_text(),
        (keys / "key.pem").read_text(),
    )
    statuses = []
    for _ in range(count):
        body = {"public_key": public_key_openssh(generate_private_key()), "ttl": "1h"}
        with httpx.Client(verify=context, timeout=10) as client:
            response = client.post(f"https://{c.auth_addr}/v1/certs/renew", json=body)
        statuses.append(response.status_code)
    return statuses


def _issued(c: Cluster) -> float:
    match = re.search(r"^certgate_certificates_issued_total (\S+)", c.diag("/metrics")[1], re.M)
    return float(match.group(1)) if match else 0.0


def test_both_processes_serve_renewals_audit_them_and_count_them(
    workers_cluster: Cluster, user: User
) -> None:
    c = workers_cluster
    assert len(_worker_pids(c)) == 1
    before = _issued(c)
    assert _renew(c, user, 30) == [200] * 30
    log = (c.data_dir / "log" / "events.log").read_text()
    assert log.count('"event": "cert.create"') >= 31  # the login's and the renewals'
    deadline = time.monotonic() + 10
    while _issued(c) < before + 30 and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker reports its counts once a second
    assert _issued(c) >= before + 30


def test_the_checks_run_in_every_process(workers_cluster: Cluster, user: User) -> None:
    c = workers_cluster
    # A lock on the user refuses every renewal, whichever process serves it.
    c.cgctl("lock", "--user=renewer", "--ttl=1h", "--message=frozen for the test")
    try:
        deadline = time.monotonic() + 10
        statuses = _renew(c, user, 10)
        while set(statuses) != {403} and time.monotonic() < deadline:
            time.sleep(0.2)  # a lock reaches the other process within a poll interval
            statuses = _renew(c, user, 10)
        assert set(statuses) == {403}
    finally:
        for lock in json.loads(c.cgctl("get", "lock", "--format=json").stdout):
            c.cgctl("rm", f"lock/{lock['metadata']['name']}")


def test_a_worker_that_dies_is_replaced(workers_cluster: Cluster, user: User) -> None:
    c = workers_cluster
    (old,) = _worker_pids(c)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "auth worker 1 restarted" not in c.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "auth worker 1 restarted" in c.log.read_text()
    (new,) = _worker_pids(c)
    assert new != old
    assert _renew(c, user, 10) == [200] * 10


def test_no_worker_outlives_the_daemon(tmp_path: Path) -> None:
    config = tmp_path / "certgate.yaml"
    config.write_text("version: v1\nauth_service:\n  workers: 3\n")
    c = Cluster(tmp_path, extra_args=["--config", str(config)])
    c.start()
    workers = _worker_pids(c)
    assert len(workers) == 2
    assert c.stop() == 0
    assert "did not stop in time" not in c.log.read_text()
    assert "Traceback" not in c.log.read_text()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
