"""Demo 3: an admin locks a contractor out. The open shell ends at once with the lock's
message, and the still-valid certificate gets nothing until the lock expires."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.support.cluster import Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgnr"
ROLES = f"""\
kind: role
metadata: {{name: contractor}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
---
kind: role
metadata: {{name: strict-ops}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
  options: {{locking_mode: strict}}
"""


@pytest.fixture(scope="module")
def lock_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(
        tmp_path_factory.mktemp("locks"),
        roles="auth,proxy,node",
        extra_args=["--strict-lock-grace", "2s"],
    )
    c.start()
    c.cgctl("create", "-f", "-", input=ROLES)
    yield c
    c.stop()


def logged_in(cluster: Cluster, name: str, roles: str = "contractor") -> tuple[User, Path]:
    user = cluster.add_user(name, roles=roles)
    cluster.login(user)
    config = user.home / "openssh_config"

    def config_with_node() -> str:
        text = cluster.cgsh(user, "config").stdout
        return text if "node-1" in text else ""

    text = eventually(config_with_node, timeout=30)
    config.write_text(text)
    return user, config


def shell(config: Path, target: str, *extra: str) -> pexpect.spawn:
    child = pexpect.spawn(
        "ssh", ["-F", str(config), "-tt", *extra, target], timeout=15, encoding="utf-8"
    )
    child.sendline("echo READY-$((40+2))")
    child.expect("READY-42")
    return child


def stock_ssh(config: Path, target: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", target, *command],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def lock(cluster: Cluster, *args: str) -> str:
    out = cluster.cgctl("lock", *args).stdout
    return out.split("'")[1]


def test_locking_a_user_ends_the_live_shell_and_refuses_everything(lock_cluster: Cluster) -> None:
    c = lock_cluster
    contractor, config = logged_in(c, "contractor")
    live = shell(config, f"{LOGIN}@node-1")

    locked_at = time.monotonic()
    name = lock(c, "--user=contractor", "--message=suspicious activity")
    live.expect("access denied: locked: suspicious activity")
    live.expect(pexpect.EOF)
    # Generous for a loaded machine: the cut follows the lock's watch, not the certificate's
    # expiry (an hour away), which is what this bounds.
    assert time.monotonic() - locked_at < 20

    refused = c.cgsh(contractor, "ssh", f"{LOGIN}@node-1", "id", check=False)
    assert refused.returncode == 3
    assert refused.stderr.strip() == "error: access denied: locked: suspicious activity"
    stock = stock_ssh(config, f"{LOGIN}@node-1", "id")
    assert stock.returncode == 255 and "Permission denied" in stock.stderr
    login = c.login(contractor, check=False)
    assert login.returncode == 3
    assert "access denied: locked: suspicious activity" in login.stderr
    api = c.cgsh(contractor, "ls", check=False)
    assert api.returncode == 3 and "locked: suspicious activity" in api.stderr

    def audited() -> list[dict[str, Any]] | None:
        # The node's session.end reaches auth up to ~1 s after the cut (docs/audit.md).
        events = json.loads(c.cgctl("audit", "ls", "--format=json", "--limit=500").stdout)
        ended = [e for e in events if e["event"] == "session.end" and e.get("reason") == "locked"]
        cut = any(e.get("lock") == name and e["user"] == "contractor" for e in ended)
        return events if cut else None

    events = eventually(audited)
    created = [e for e in events if e["event"] == "lock.created" and e["name"] == name]
    assert created and created[0]["target"] == "user=contractor"
    c.cgctl("rm", f"lock/{name}")

    # A lock with a TTL lifts itself, with nobody acting.
    # Long enough to be seen in force on a loaded machine, short enough to wait out.
    brief = lock(c, "--user=contractor", "--ttl=10s", "--message=brief")
    assert "locked: brief" in c.cgsh(contractor, "ls", check=False).stderr
    eventually(lambda: stock_ssh(config, f"{LOGIN}@node-1", "true").returncode == 0, timeout=60)
    assert c.login(contractor).returncode == 0
    assert c.cgsh(contractor, "ssh", f"{LOGIN}@node-1", "echo back").stdout.strip() == "back"
    eventually(
        lambda: any(
            e["event"] == "lock.expired" and e["name"] == brief
            for e in json.loads(
                c.cgctl("audit", "ls", "--event=lock.expired", "--format=json").stdout
            )
        ),
        timeout=30,
    )


@pytest.mark.parametrize(
    ("flag", "hits", "spared"),
    [
        ("--role=strict-ops", "role-a", "role-b"),
        (f"--login={LOGIN}", "login-a", None),
        ("--node=node-1", "node-a", None),
    ],
)
def test_role_login_and_node_locks(
    lock_cluster: Cluster, flag: str, hits: str, spared: str | None
) -> None:
    c = lock_cluster
    _, hit_config = logged_in(c, hits, roles="strict-ops")
    live = shell(hit_config, f"{LOGIN}@node-1")
    spared_config = logged_in(c, spared)[1] if spared else None
    name = lock(c, flag, "--message=maintenance")
    live.expect("access denied: locked: maintenance")
    live.expect(pexpect.EOF)
    assert stock_ssh(hit_config, f"{LOGIN}@node-1", "true").returncode == 255
    if spared_config is not None:
        assert stock_ssh(spared_config, f"{LOGIN}@node-1", "true").returncode == 0
    c.cgctl("rm", f"lock/{name}")
    eventually(lambda: stock_ssh(hit_config, f"{LOGIN}@node-1", "true").returncode == 0, timeout=30)


def test_strict_locking_refuses_when_auth_is_unreachable(lock_cluster: Cluster) -> None:
    c = lock_cluster
    _, port = c.start_node("node-strict", "env=dev", "--strict-lock-grace", "2s")
    strict, _strict_config = logged_in(c, "strict-user", roles="strict-ops")
    relaxed, _relaxed_config = logged_in(c, "relaxed-user", roles="contractor")

    def direct(user: User, *extra: str) -> list[str]:
        # Straight to the node: the proxy lives in the auth process this test stops.
        keys = user.home / "keys"
        return [
            "-F", "/dev/null", "-i", str(keys / "key"),
            "-o", f"CertificateFile={keys / 'key-cert.pub'}",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-p", str(port), *extra, f"{LOGIN}@127.0.0.1",
        ]  # fmt: skip

    strict_live = pexpect.spawn("ssh", ["-tt", *direct(strict)], timeout=15, encoding="utf-8")
    strict_live.sendline("echo READY-$((40+2))")
    strict_live.expect("READY-42")
    relaxed_live = pexpect.spawn("ssh", ["-tt", *direct(relaxed)], timeout=15, encoding="utf-8")
    relaxed_live.sendline("echo READY-$((40+2))")
    relaxed_live.expect("READY-42")

    assert c.process is not None
    os.kill(c.process.pid, signal.SIGSTOP)  # auth (with its proxy) stops answering
    try:
        strict_live.expect("cannot confirm locks with auth", timeout=30)
        strict_live.expect(pexpect.EOF)
        new_strict = subprocess.run(
            ["ssh", *direct(strict), "true"], capture_output=True, timeout=30
        )
        assert new_strict.returncode == 255
        new_relaxed = subprocess.run(
            ["ssh", *direct(relaxed), "echo still-here"], capture_output=True, text=True, timeout=30
        )
        assert new_relaxed.stdout.strip() == "still-here"
        relaxed_live.sendline("echo ALIVE-$((1+1))")
        relaxed_live.expect("ALIVE-2")
    finally:
        os.kill(c.process.pid, signal.SIGCONT)
    eventually(
        lambda: (
            subprocess.run(
                ["ssh", *direct(strict), "true"], capture_output=True, timeout=30
            ).returncode
            == 0
        ),
        timeout=30,
    )
    relaxed_live.sendline("exit")
    relaxed_live.expect(pexpect.EOF)
