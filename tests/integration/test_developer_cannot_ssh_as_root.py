"""Demo 1: a developer whose role allows only `cgnr` reaches labelled nodes as `cgnr` —
through cgsh and through stock OpenSSH — and never as root."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    load_ssh_public_identity,
)

from tests.support.cluster import Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgnr"  # four letters, like "root": the tampering test swaps one for the other
DEVELOPER = f"""\
kind: role
metadata: {{name: developer}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{env: dev}}
  deny:
    logins: [root]
  options: {{port_forwarding: false}}
---
kind: role
metadata: {{name: forwarder}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{env: dev}}
  options: {{port_forwarding: true}}
"""


@pytest.fixture(scope="module")
def ssh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("ssh"), roles="auth,proxy,node", labels="env=dev")
    c.start()
    c.start_node("node-prod", "env=prod")
    c.cgctl("create", "-f", "-", input=DEVELOPER)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def dev(ssh_cluster: Cluster) -> User:
    user = ssh_cluster.add_user("dev", roles="developer")
    ssh_cluster.login(user)
    return user


@pytest.fixture(scope="module")
def ssh_config(ssh_cluster: Cluster, dev: User) -> Path:
    deadline = time.monotonic() + 10
    while "node-1" not in ssh_cluster.cgsh(dev, "config").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    path = dev.home / "openssh_config"
    path.write_text(ssh_cluster.cgsh(dev, "config").stdout)
    return path


def stock_ssh(config: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_ls_shows_only_nodes_the_roles_allow(ssh_cluster: Cluster, dev: User) -> None:
    listed = json.loads(ssh_cluster.cgsh(dev, "ls", "--format=json").stdout)
    assert [n["metadata"]["name"] for n in listed] == ["node-1"]
    admin = ssh_cluster.add_user("ops", roles="access", logins="root")
    ssh_cluster.login(admin)
    everything = ssh_cluster.cgsh(admin, "ls").stdout
    assert "node-1" in everything and "node-prod" in everything
    assert "node-prod" in ssh_cluster.cgsh(admin, "ls", "env=prod").stdout
    assert "node-1" not in ssh_cluster.cgsh(admin, "ls", "env=prod").stdout


def test_cgsh_ssh_runs_as_the_allowed_login(ssh_cluster: Cluster, dev: User) -> None:
    account = pwd.getpwnam(LOGIN)
    out = ssh_cluster.cgsh(dev, "ssh", f"{LOGIN}@node-1", "id -u; id -g; echo $HOME; pwd").stdout
    assert out.split() == [str(account.pw_uid), str(account.pw_gid), account.pw_dir, account.pw_dir]
    status = ssh_cluster.cgsh(dev, "ssh", "-l", LOGIN, "node-1", "exit 7", check=False)
    assert status.returncode == 7


def test_cgsh_refuses_root_with_a_reason(ssh_cluster: Cluster, dev: User) -> None:
    result = ssh_cluster.cgsh(dev, "ssh", "root@node-1", "id", check=False)
    assert result.returncode == 3
    assert result.stderr.strip() == (
        'error: access denied to root@node-1: login "root" is denied by role developer'
    )
    other = ssh_cluster.cgsh(dev, "ssh", "ubuntu@node-1", "id", check=False)
    assert other.stderr.strip() == (
        'error: access denied to ubuntu@node-1: login "ubuntu" is not allowed by your roles'
    )


def test_other_labels_are_invisible(ssh_cluster: Cluster, dev: User) -> None:
    result = ssh_cluster.cgsh(dev, "ssh", f"{LOGIN}@node-prod", "id", check=False)
    assert result.returncode == 4
    assert result.stderr.strip() == 'error: node "node-prod" not found'
    missing = ssh_cluster.cgsh(dev, "ssh", f"{LOGIN}@nowhere", "id", check=False)
    assert missing.stderr.strip() == 'error: node "nowhere" not found'


def test_stock_openssh_works_as_cgnr_and_not_as_root(
    ssh_cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    ok = stock_ssh(ssh_config, f"{LOGIN}@node-1", "whoami")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == LOGIN
    also = stock_ssh(ssh_config, f"{LOGIN}@node-1.{ssh_cluster.cluster_name}", "whoami")
    assert also.stdout.strip() == LOGIN
    refused = stock_ssh(ssh_config, "root@node-1", "whoami")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    eventually(
        lambda: any(
            e.get("login") == "root" and "root" in e.get("reason", "")
            for e in json.loads(
                ssh_cluster.cgctl("audit", "ls", "--event=session.rejected", "--user=dev",
                                  "--format=json").stdout
            )
        )
    )  # fmt: skip
    to_prod = stock_ssh(ssh_config, f"{LOGIN}@node-prod", "whoami")
    assert to_prod.returncode == 255


def test_the_jump_host_only_reaches_inventory_nodes(
    ssh_cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    # An arbitrary address through the jump host is refused, not dialled.
    # (The config names the jump host by an alias, so it never captures `ssh 127.0.0.1`.)
    result = stock_ssh(
        ssh_config, "-W", f"127.0.0.9:{ssh_cluster.auth_port}",
        f"certgate@certgate-proxy.{ssh_cluster.cluster_name}",
    )  # fmt: skip
    assert result.returncode != 0
    assert 'node "127.0.0.9" not found' in result.stderr


def test_the_config_does_not_capture_ssh_to_the_proxy_host(ssh_config: Path) -> None:
    text = ssh_config.read_text()
    hosts = [line.split()[1:] for line in text.splitlines() if line.startswith("Host ")]
    assert hosts and all("127.0.0.1" not in patterns for patterns in hosts), text
    # What OpenSSH itself makes of `ssh 127.0.0.1` with this config: untouched.
    seen = subprocess.run(
        ["ssh", "-G", "-F", str(ssh_config), "127.0.0.1"], capture_output=True, text=True
    ).stdout
    assert "proxyjump" not in seen and "port 22\n" in seen


def test_scp_sftp_rsync_keep_contents_and_ownership(
    ssh_cluster: Cluster, dev: User, ssh_config: Path, tmp_path: Path
) -> None:
    account = pwd.getpwnam(LOGIN)
    payload = os.urandom(3 * 1024 * 1024)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    remote = f"{account.pw_dir}/from-cgsh.bin"
    ssh_cluster.cgsh(dev, "scp", str(source), f"{LOGIN}@node-1:{remote}")
    stat = Path(remote).stat()
    assert (stat.st_uid, stat.st_gid) == (account.pw_uid, account.pw_gid)
    assert hashlib.sha256(Path(remote).read_bytes()).digest() == hashlib.sha256(payload).digest()
    back = tmp_path / "back.bin"
    ssh_cluster.cgsh(dev, "scp", f"{LOGIN}@node-1:{remote}", str(back))
    assert back.read_bytes() == payload

    batch = tmp_path / "batch"
    batch.write_text(f"put {source} {account.pw_dir}/from-sftp.bin\n")
    sftp = subprocess.run(
        ["sftp", "-F", str(ssh_config), "-b", str(batch), f"{LOGIN}@node-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sftp.returncode == 0, sftp.stderr
    assert Path(f"{account.pw_dir}/from-sftp.bin").stat().st_uid == account.pw_uid

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha")
    rsync = subprocess.run(
        ["rsync", "-a", "-e", f"ssh -F {ssh_config}", f"{tree}/", f"{LOGIN}@node-1:rsynced/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rsync.returncode == 0, rsync.stderr
    copied = Path(account.pw_dir) / "rsynced" / "sub" / "a.txt"
    assert copied.read_text() == "alpha"
    assert copied.stat().st_uid == account.pw_uid

    denied = stock_ssh(ssh_config, f"{LOGIN}@node-1", "touch /root/should-not-exist")
    assert denied.returncode != 0
    assert not Path("/root/should-not-exist").exists()


def test_port_forwarding_needs_a_role_that_allows_it(
    ssh_cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    forward = ["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", f"{LOGIN}@node-1", "true"]
    refused = stock_ssh(ssh_config, *forward)
    assert refused.returncode == 255
    assert "remote port forwarding failed" in refused.stderr

    forwarder = ssh_cluster.add_user("fwd", roles="forwarder")
    ssh_cluster.login(forwarder)
    config = forwarder.home / "openssh_config"
    config.write_text(ssh_cluster.cgsh(forwarder, "config").stdout)
    allowed = stock_ssh(config, *forward)
    assert allowed.returncode == 0, allowed.stderr


def _tampered_cert(cert_line: str, old: bytes, new: bytes) -> str:
    kind, blob, *_ = cert_line.split()
    raw = base64.b64decode(blob)
    assert old in raw
    return f"{kind} {base64.b64encode(raw.replace(old, new)).decode()}"


def _valid_before(cert: Path) -> int:
    """The Unix time at which the OpenSSH certificate in `cert` stops being valid."""
    parsed = load_ssh_public_identity(cert.read_bytes())
    assert isinstance(parsed, SSHCertificate)
    return parsed.valid_before


def _config_with_cert(config: Path, cert: Path) -> Path:
    """The user's ssh config, presenting `cert` instead of the one cgsh login made."""
    keys = config.parent / "keys"
    text = config.read_text().replace(
        f"CertificateFile {keys / 'key-cert.pub'}", f"CertificateFile {cert}"
    )
    assert str(cert) in text
    path = cert.with_suffix(".config")
    path.write_text(text)
    return path


def test_forged_and_expired_certificates_are_refused(
    ssh_cluster: Cluster, dev: User, ssh_config: Path, tmp_path: Path
) -> None:
    keys = dev.home / "keys"
    cert = (keys / "key-cert.pub").read_text()
    forged = tmp_path / "forged-cert.pub"
    forged.write_text(_tampered_cert(cert, LOGIN.encode(), b"root") + "\n")
    result = stock_ssh(_config_with_cert(ssh_config, forged), "root@node-1", "id")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr

    # A certificate from another cluster's CA, for the same key.
    other_ca = tmp_path / "other_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_ca)], check=True)
    pub = tmp_path / "dev.pub"
    pub.write_text((keys / "key.pub").read_text())
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(other_ca), "-I", "dev", "-n", f"{LOGIN},root",
         "-V", "-5m:+1h", str(pub)], check=True,
    )  # fmt: skip
    wrong_ca = stock_ssh(
        _config_with_cert(ssh_config, tmp_path / "dev-cert.pub"), f"{LOGIN}@node-1", "id"
    )
    assert wrong_ca.returncode == 255
    assert "Permission denied" in wrong_ca.stderr

    # cgsh refuses an expired certificate before dialling, so the config is written while
    # a normal login is valid; the same config then presents a 2-second certificate.
    short = ssh_cluster.add_user("brief", roles="developer")
    ssh_cluster.login(short)
    config = short.home / "openssh_config"
    config.write_text(ssh_cluster.cgsh(short, "config").stdout)
    control = stock_ssh(config, f"{LOGIN}@node-1", "id", "-un")
    assert control.returncode == 0 and control.stdout.strip() == LOGIN, control.stderr
    ssh_cluster.login(short, "--ttl=2s")
    valid_before = _valid_before(short.home / "keys" / "key-cert.pub")
    assert valid_before - time.time() < 60, "the login did not write the short certificate"
    eventually(lambda: time.time() > valid_before + 1, timeout=30)
    expired = stock_ssh(config, f"{LOGIN}@node-1", "id")
    assert expired.returncode == 255
    refused = ssh_cluster.cgsh(short, "ssh", f"{LOGIN}@node-1", "id", check=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr


def test_a_node_that_stops_leaves_the_inventory(ssh_cluster: Cluster, dev: User) -> None:
    process, _ = ssh_cluster.start_node("node-brief", "env=dev")
    deadline = time.monotonic() + 10
    while "node-brief" not in ssh_cluster.cgsh(dev, "ls").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.kill()
    process.wait()
    # Generous: that it leaves is the point, not how fast (a loaded CI machine is slow).
    eventually(lambda: "node-brief" not in ssh_cluster.cgsh(dev, "ls").stdout, timeout=30)


def test_sessions_are_audited(ssh_cluster: Cluster, dev: User) -> None:
    ssh_cluster.cgsh(dev, "ssh", f"{LOGIN}@node-1", "echo audited")

    def audited() -> list[dict[str, Any]] | None:
        # This command's own events: earlier tests' sessions of dev are in the log too,
        # and a node's events reach auth up to ~1 s after they happen (docs/audit.md).
        out = ssh_cluster.cgctl("audit", "ls", "--user=dev", "--format=json", "--limit=200")
        events: list[dict[str, Any]] = json.loads(out.stdout)
        ran = [e for e in events if e["event"] == "exec" and "audited" in e.get("command", "")]
        if not ran:
            return None
        ours = [e for e in events if e.get("session_id") == ran[0].get("session_id")]
        kinds = {e["event"] for e in ours}
        return ours if {"session.start", "session.end", "exec"} <= kinds else None

    events = eventually(audited)
    exec_event = next(e for e in events if e["event"] == "exec")
    assert exec_event["login"] == LOGIN
    assert exec_event["node"] == "node-1"


def test_cgsh_runs_a_command_on_every_node_with_a_label(ssh_cluster: Cluster) -> None:
    ops = ssh_cluster.add_user("fleet-ops", roles="access", logins=LOGIN)
    ssh_cluster.login(ops)
    out = ssh_cluster.cgsh(ops, "ssh", f"{LOGIN}@env=dev", "echo hi-from-$(whoami)")
    lines = sorted(out.stdout.splitlines())
    assert "[node-1] hi-from-cgnr" in lines
    assert not any(line.startswith("[node-prod]") for line in lines)
    failing = ssh_cluster.cgsh(ops, "ssh", f"{LOGIN}@env=prod", "exit 3", check=False)
    assert failing.returncode == 3


def test_cgsh_ssh_gives_an_interactive_terminal(ssh_cluster: Cluster, dev: User) -> None:
    import pexpect

    child = pexpect.spawn(
        str(Path(ssh_cluster.command()[0]).parent / "cgsh"),
        ["ssh", "-t", f"{LOGIN}@node-1"],
        env={**os.environ, "CERTGATE_HOME": str(dev.home)},
        timeout=15,
        encoding="utf-8",
        dimensions=(30, 100),
    )
    child.sendline("stty size; echo DONE-$((6*7))")
    child.expect("30 100")
    child.expect("DONE-42")
    child.sendline("exit 5")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5
