"""The newcomer's path: start a cluster, accept the invite, log in, use plain ssh."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import PASSWORD, Cluster, User, invite_token, run
from tests.support.otp import OtpDevice
from tests.support.sshd import run_sshd


@pytest.fixture(scope="module")
def first_admin_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("first-admin"), extra_args=["--first-admin", "admin"])
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def admin(first_admin_cluster: Cluster) -> User:
    c = first_admin_cluster
    token = invite_token(c.log.read_text())
    status, invite = c.web("GET", f"/v1/invites/{token}")
    assert status == 200
    assert invite["user"] == "admin"
    assert invite["totp_uri"].startswith("otpauth://totp/")
    otp = OtpDevice(invite["totp_secret"])
    status, _ = c.web(
        "POST", f"/v1/invites/{token}", {"password": PASSWORD, "otp": otp.next_code()}
    )
    assert status == 204
    user = User("admin", PASSWORD, otp, c.workdir / "home-admin")
    # The login command `certgate start` (and so `make run`) prints works as shown.
    shown = re.search(r"Then: (cgsh login .+)", c.log.read_text())
    assert shown
    assert shown.group(1) == f"cgsh login --proxy=https://{c.proxy_addr} --user=admin --insecure"
    c.cgsh(
        user, *shlex.split(shown.group(1))[1:], f"--otp={otp.next_code()}", input=PASSWORD + "\n"
    )
    return user


def test_invite_link_is_printed_once_and_used_once(
    first_admin_cluster: Cluster, admin: User
) -> None:
    c = first_admin_cluster
    log = c.log.read_text()
    assert log.count("/web/invite/") == 1
    token = invite_token(log)
    status, body = c.web("GET", f"/v1/invites/{token}")
    assert status == 404
    assert "invite" in body["message"]


def test_status_shows_the_identity(first_admin_cluster: Cluster, admin: User) -> None:
    out = first_admin_cluster.cgsh(admin, "status").stdout
    assert "Logged in as:       admin" in out
    assert "access, editor, auditor" in out
    assert "root" in out
    assert "valid for 7h" in out or "valid for 8h" in out


def test_issued_ssh_cert_reads_right_in_ssh_keygen(admin: User) -> None:
    out = run(["ssh-keygen", "-L", "-f", str(admin.home / "keys" / "key-cert.pub")]).stdout
    assert "user certificate" in out
    assert 'Key ID: "admin"' in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["root"]
    assert "Critical Options: (none)" in out
    for extension in ("permit-pty", "permit-port-forwarding", "roles@certgate", "traits@certgate"):
        assert extension in out
    assert "Valid: from " in out


def test_plain_ssh_logs_into_a_stock_sshd_trusting_the_exported_ca(
    first_admin_cluster: Cluster, admin: User, tmp_path: Path
) -> None:
    user_ca = first_admin_cluster.cgctl("auth", "export", "--type=user").stdout
    assert user_ca.startswith("ssh-ed25519 ")
    keys = admin.home / "keys"
    with run_sshd(tmp_path / "sshd", user_ca) as sshd:
        result = subprocess.run(
            [
                "ssh", "-F", "/dev/null", "-i", str(keys / "key"),
                "-o", f"CertificateFile={keys / 'key-cert.pub'}",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-p", str(sshd.port), "root@127.0.0.1", "echo", "hello-from-sshd",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + sshd.log.read_text()
        assert result.stdout.strip() == "hello-from-sshd"
        assert "ID admin" in sshd.log.read_text()


def test_stock_sshd_refuses_a_login_that_is_not_a_principal(
    first_admin_cluster: Cluster, admin: User, tmp_path: Path
) -> None:
    user_ca = first_admin_cluster.cgctl("auth", "export", "--type=user").stdout
    keys = admin.home / "keys"
    with run_sshd(tmp_path / "sshd", user_ca) as sshd:
        result = subprocess.run(
            [
                "ssh", "-F", "/dev/null", "-i", str(keys / "key"),
                "-o", f"CertificateFile={keys / 'key-cert.pub'}",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-p", str(sshd.port), "nobody@127.0.0.1", "true",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 255
        assert "Permission denied" in result.stderr


def test_host_ca_export_is_a_known_hosts_line(first_admin_cluster: Cluster) -> None:
    line = first_admin_cluster.cgctl("auth", "export", "--type=host").stdout.strip()
    assert line.startswith("@cert-authority * ssh-ed25519 ")


def test_a_restart_before_sign_up_prints_a_new_link_and_voids_the_old(
    tmp_path: Path,
) -> None:
    """`make run`, Ctrl-C before opening the link (or after it expired), `make run`
    again: a new link, not silence that leaves nobody able to log in."""
    c = Cluster(tmp_path / "restarted", extra_args=["--first-admin", "admin"])
    c.start()
    try:
        first = invite_token(c.log.read_text())
        c.stop()
        c.start()
        log = c.log.read_text()
        assert 'First admin user "admin" has not signed up yet' in log
        tokens = re.findall(r"/web/invite/([0-9a-f]+)", log)
        assert len(tokens) == 2 and tokens[0] == first
        assert c.web("GET", f"/v1/invites/{first}")[0] == 404
        status, invite = c.web("GET", f"/v1/invites/{tokens[1]}")
        assert status == 200 and invite["user"] == "admin"
        otp = OtpDevice(invite["totp_secret"])
        status, _ = c.web(
            "POST", f"/v1/invites/{tokens[1]}", {"password": PASSWORD, "otp": otp.next_code()}
        )
        assert status == 204
        # Signed up: a further start prints no link.
        c.stop()
        c.start()
        assert c.log.read_text().count("/web/invite/") == 2
    finally:
        c.stop()
