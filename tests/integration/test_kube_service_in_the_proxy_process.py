"""A kube service started in the proxy's own process (`certgate start --roles
auth,proxy,kube`) takes kubectl's calls from that proxy in-process, with no TLS leg to
itself, and still decides everything itself; a kube service in a process of its own is
still dialed over mutual TLS. Large exec output arrives whole on both paths.

Real processes: certgate auth + proxy + kube in one, a second kube service that joined
with a token, real kubectl 1.37 and the API-server stand-in.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import User
from tests.support.kube_cluster import KUBECTL, KubeSetup, started_kube
from tests.support.kube_standin import Grant
from tests.support.wait import eventually

ROLES = """
kind: role
version: v1
metadata: {name: kube-contractor}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
---
kind: role
version: v1
metadata: {name: kube-admin}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
    rules: [{resources: [session], verbs: [list, read]}]
  options: {record_session: {k8s: strict}}
"""

NEAR, FAR = "near-cluster", "far-cluster"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeSetup]:
    workdir = tmp_path_factory.mktemp("kube-in-proxy")
    grants = [Grant(("group:system:masters",))]
    with started_kube(workdir, grants, ROLES, cluster_name=FAR, in_proxy=NEAR) as setup:
        yield setup


def _user(kube: KubeSetup, name: str, roles: str) -> User:
    user = kube.cluster.add_user(name, roles=roles)
    kube.cluster.login(user)
    listed = partial(kube.cluster.cgsh, user, "kube", "ls")
    eventually(lambda: FAR in listed().stdout and NEAR in listed().stdout)
    for cluster in (FAR, NEAR):  # both contexts written; NEAR is current
        result = kube.kube_login(user, cluster)
        assert result.returncode == 0, result.stderr
    shown = kube.cgsh(user, "kube", "ls").stdout.splitlines()
    selected = [line.split()[0] for line in shown if line.endswith("*")]
    assert selected == [NEAR]
    return user


def _recordings(kube: KubeSetup, user: User) -> list[dict[str, Any]]:
    out = kube.cluster.cgsh(user, "recordings", "ls", "--format=json").stdout
    return [r for r in json.loads(out) if r["user"] == user.name]


def _context(kube: KubeSetup, cluster: str) -> str:
    return f"{kube.cluster.cluster_name}-{cluster}"


def _echo(kube: KubeSetup, user: User, cluster: str) -> subprocess.Popen[bytes]:
    """`kubectl exec -i web -- cat`: a running exec session that echoes what it is sent."""
    return subprocess.Popen(
        [str(KUBECTL), "--context", _context(kube, cluster), "-n", "dev", "exec", "-i", "web",
         "--", "cat"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=kube.env(user),
    )  # fmt: skip


def _established_to(port: int) -> int:
    """TCP connections accepted on loopback `port` that are open now (/proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            count += 1
    return count


def test_exec_reaches_an_in_process_kube_service_without_dialing_it(kube: KubeSetup) -> None:
    user = _user(kube, "admin1", "kube-admin")
    far_port, near_port = kube.service_port, kube.in_proxy_port
    seen: dict[str, int] = {}
    for cluster in (FAR, NEAR):
        echo = _echo(kube, user, cluster)
        assert echo.stdin is not None and echo.stdout is not None
        try:
            echo.stdin.write(b"through-" + cluster.encode() + b"\n")
            echo.stdin.flush()
            assert echo.stdout.readline() == b"through-" + cluster.encode() + b"\n"
            # The exec session runs now: count the connections its kube service accepted.
            port = far_port if cluster == FAR else near_port
            seen[cluster] = _established_to(port)
        finally:
            echo.communicate(timeout=30)  # closes stdin: cat ends, kubectl with it
    # The separate kube service is dialed (the count does see a running exec's
    # connection); the one in the proxy's process is not.
    assert seen[FAR] >= 1
    assert seen[NEAR] == 0


def test_the_in_process_kube_service_still_decides(kube: KubeSetup) -> None:
    contractor = _user(kube, "contractor1", "kube-contractor")
    refused = kube.kubectl(contractor, "--context", _context(kube, NEAR), "get", "nodes")
    assert refused.returncode != 0
    assert 'user "contractor1" has no assigned groups or users' in refused.stderr
    admin = _user(kube, "admin2", "kube-admin")
    wider = kube.kubectl(
        admin, "--context", _context(kube, NEAR), "get", "pods", "-n", "dev",
        "--as-group=not-in-my-roles",
    )  # fmt: skip
    assert wider.returncode != 0
    allowed = kube.kubectl(admin, "--context", _context(kube, NEAR), "get", "pods", "-n", "dev")
    assert allowed.returncode == 0, allowed.stderr
    # What reached the API server: the user's name and groups from the roles, set by
    # the kube service (the stand-in records the headers of every call).
    last = kube.standin.seen("/namespaces/dev/pods")[-1]
    assert last.headers["impersonate-user"] == ["admin2"]
    assert set(last.headers["impersonate-group"]) == {"system:masters", "system:authenticated"}


@pytest.mark.parametrize("cluster", [NEAR, FAR])
def test_large_exec_output_arrives_whole_and_is_recorded(
    kube: KubeSetup, cluster: str, tmp_path: Path
) -> None:
    user = _user(kube, f"reader-{cluster}", "kube-admin")
    big = tmp_path / "big.txt"
    lines = [f"{i:07d} {'abcdefghij' * 9}\n" for i in range(60000)]  # ~5.7 MiB
    big.write_text("".join(lines))
    result = subprocess.run(
        [str(KUBECTL), "--context", _context(kube, cluster), "-n", "dev", "exec", "web", "--",
         "cat", str(big)],
        capture_output=True, env=kube.env(user), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == big.read_bytes()
    # record_session.k8s: strict records exec commands: the recording has it all.
    found = eventually(lambda: _recordings(kube, user))
    played = kube.cluster.cgsh(user, "play", found[-1]["id"], "--speed=1000").stdout
    assert lines[0] in played and lines[-1] in played


def test_a_lock_ends_an_exec_on_the_in_process_kube_service(kube: KubeSetup) -> None:
    user = _user(kube, "locked1", "kube-admin")
    echo = _echo(kube, user, NEAR)
    assert echo.stdin is not None and echo.stdout is not None
    try:
        echo.stdin.write(b"alive\n")
        echo.stdin.flush()
        assert echo.stdout.readline() == b"alive\n"  # it runs: the lock is what ends it
        kube.cluster.cgctl("lock", "--user=locked1", "--message=incident 7")
        echo.wait(30)
    finally:
        _, err = echo.communicate(timeout=30)
    assert echo.returncode != 0
    assert b"session ended by certgate" in err or b"incident 7" in err
    refused = kube.kubectl(user, "--context", _context(kube, NEAR), "get", "pods", "-n", "dev")
    assert refused.returncode != 0 and "incident 7" in refused.stderr
