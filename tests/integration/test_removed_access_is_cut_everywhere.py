"""Taking access away takes it away now, from the certificates already issued too.

Before: the auth API trusted the roles written in a certificate, so an admin demoted to
`access` still created an `editor` user with their old certificate, and a deleted
user's certificate still listed users; nodes let old certificates in until they expired.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.support.cluster import BIN, Cluster, User, run
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgcut"
ROLES = f"""\
kind: role
metadata: {{name: cut-shell}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
---
kind: role
metadata: {{name: cut-extra}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("cuts"), roles="auth,proxy,node")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLES)
    yield c
    c.stop()


def remote_cgctl(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CERTGATE_HOME": str(user.home), "CERTGATE_DATA_DIR": ""}
    return run([str(BIN / "cgctl"), *args], env=env, check=False)


def ssh_config(cluster: Cluster, user: User) -> Path:
    config = user.home / "openssh_config"
    config.write_text(eventually(lambda: _config_with_node(cluster, user)))
    return config


def _config_with_node(cluster: Cluster, user: User) -> str | None:
    text = cluster.cgsh(user, "config").stdout
    return text if "node-1" in text else None


def stock_ssh(config: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", f"{LOGIN}@node-1", *command],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_a_demoted_admin_is_refused_with_the_old_certificate(cluster: Cluster) -> None:
    boss = cluster.add_user("cut-boss", roles="access,editor")
    cluster.login(boss)
    assert remote_cgctl(boss, "users", "add", "cut-new-1", "--roles=access").returncode == 0

    # Demoted with a document (`users update` below does the same).
    demoted = f"kind: user\nmetadata: {{name: {boss.name}}}\nspec: {{roles: [access]}}\n"
    cluster.cgctl("create", "--force", "-f", "-", input=demoted)
    made = remote_cgctl(boss, "users", "add", "cut-new-2", "--roles=editor")
    assert made.returncode == 3, made.stdout
    assert "access denied" in made.stderr
    assert "cut-new-2" not in cluster.cgctl("users", "ls").stdout
    # A fresh login works at once, with what the user holds now.
    cluster.login(boss)
    status = json.loads(cluster.cgsh(boss, "status", "--format=json").stdout)
    assert status["roles"] == ["access"]
    listed = remote_cgctl(boss, "users", "ls")
    assert listed.returncode == 3
    assert 'do not allow "list" on "user"' in listed.stderr
    events = json.loads(
        cluster.cgctl("audit", "ls", "--event=lock.created", "--format=json").stdout
    )
    assert any(e["name"] == f"certs-of-{boss.name}" for e in events)


def test_a_deleted_users_certificate_is_refused(cluster: Cluster) -> None:
    gone = cluster.add_user("cut-gone", roles="access,editor")
    cluster.login(gone)
    assert "cut-gone" in remote_cgctl(gone, "users", "ls").stdout
    cluster.cgctl("users", "rm", gone.name)
    refused = remote_cgctl(gone, "users", "ls")
    assert refused.returncode == 3
    assert "access denied" in refused.stderr
    assert cluster.cgsh(gone, "ls", check=False).returncode == 3


def test_removing_a_role_closes_live_sessions_and_a_new_login_works(cluster: Cluster) -> None:
    dave = cluster.add_user("cut-dave", roles="cut-shell,cut-extra")
    cluster.login(dave)
    config = ssh_config(cluster, dave)
    live = pexpect.spawn(
        "ssh", ["-F", str(config), "-tt", f"{LOGIN}@node-1"], timeout=15, encoding="utf-8"
    )
    live.sendline("echo READY-$((40+2))")
    live.expect("READY-42")

    cut_at = time.monotonic()
    cluster.cgctl("users", "update", dave.name, "--set-roles=cut-shell")
    live.expect("certificate issued before user cut-dave was changed")
    live.expect(pexpect.EOF)
    assert time.monotonic() - cut_at < 20  # generous: the change cuts it, not the cert's expiry
    events = json.loads(cluster.cgctl("audit", "ls", "--event=user.update", "--format=json").stdout)
    assert any(e["name"] == dave.name and e["removed"] == ["role cut-extra"] for e in events)
    # The old certificate gets nothing more, at the node either.
    assert stock_ssh(config, "true").returncode == 255
    # A new login, with the roles the user holds now, works at once.
    cluster.login(dave)
    assert stock_ssh(config, "echo", "back").stdout.strip() == "back"
    status = json.loads(cluster.cgsh(dave, "status", "--format=json").stdout)
    assert status["roles"] == ["cut-shell"]
