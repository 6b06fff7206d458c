"""cgctl away from the auth host uses the cgsh login, and the user's role rules decide.
Identity headers cannot be forged past the proxy or straight to auth."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509

from tests.support.cluster import BIN, Cluster, User, run
from tests.support.wait import eventually


def remote_cgctl(user: User, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"CERTGATE_HOME": str(user.home), "CERTGATE_DATA_DIR": ""}
    return run([str(BIN / "cgctl"), *args], env=env, check=check)


def test_editor_manages_users_through_the_proxy(cluster: Cluster) -> None:
    editor = cluster.add_user("remote-editor", roles="access,editor")
    cluster.login(editor)
    listed = remote_cgctl(editor, "users", "ls")
    assert "remote-editor" in listed.stdout
    added = remote_cgctl(editor, "users", "add", "remote-new", "--roles=access")
    assert "/web/invite/" in added.stdout
    event = cluster.cgctl("audit", "ls", "--event=user.create", "--format=json").stdout
    assert '"user": "remote-editor"' in event


def test_access_only_user_is_refused_admin_calls(cluster: Cluster) -> None:
    plain = cluster.add_user("remote-plain", roles="access")
    cluster.login(plain)
    result = remote_cgctl(plain, "users", "ls", check=False)
    assert result.returncode == 3
    assert result.stderr.strip() == 'error: access denied: your roles do not allow "list" on "user"'
    result = remote_cgctl(plain, "create", "-f", "-", check=False)
    assert result.returncode != 0
    # The refusal is an event an admin can find: who, what they tried, why not.
    out = cluster.cgctl("audit", "ls", "--event=session.rejected", "--format=json").stdout
    [refused] = [
        e
        for e in json.loads(out)
        if e.get("user") == "remote-plain" and e.get("resource") == "user"
    ]
    assert (refused["kind"], refused["verb"], refused["server"]) == ("api", "list", "auth")
    assert refused["reason"] == 'access denied: your roles do not allow "list" on "user"'


def test_auditor_reads_the_audit_log_but_cannot_create_roles(cluster: Cluster) -> None:
    auditor = cluster.add_user("remote-auditor", roles="auditor")
    cluster.login(auditor)
    assert remote_cgctl(auditor, "audit", "ls", "--limit=3").returncode == 0
    role = "kind: role\nmetadata: {name: sneaky}\nspec: {allow: {logins: [root]}}\n"
    env = {"CERTGATE_HOME": str(auditor.home), "CERTGATE_DATA_DIR": ""}
    result = run([str(BIN / "cgctl"), "create", "-f", "-"], input=role, env=env, check=False)
    assert result.returncode == 3
    assert 'do not allow "create" on "role"' in result.stderr


def test_not_logged_in_and_no_data_dir_is_a_clear_refusal(tmp_path: Path) -> None:
    env = {"CERTGATE_HOME": str(tmp_path / "nobody"), "CERTGATE_DATA_DIR": ""}
    result = run([str(BIN / "cgctl"), "users", "ls"], env=env, check=False)
    if os.path.exists("/var/lib/certgate/admin"):
        return  # a real cluster on this machine answers instead
    assert result.returncode == 3
    assert "log in with cgsh login" in result.stderr


def _user_client(cluster: Cluster, user: User, base: str) -> httpx.Client:
    keys = user.home / "keys"
    context = ssl.create_default_context(cafile=str(keys / "cas.pem"))
    context.check_hostname = False
    context.load_cert_chain(str(keys / "tls.crt"), str(keys / "key.pem"))
    return httpx.Client(base_url=base, verify=context, timeout=10)


def test_a_user_cannot_forge_a_forwarded_identity_at_auth(cluster: Cluster) -> None:
    plain = cluster.add_user("forger", roles="access")
    cluster.login(plain)
    admin_cert = (cluster.data_dir / "admin" / "tls.crt").read_text()
    der = base64.b64encode(ssl.PEM_cert_to_DER_cert(admin_cert)).decode()
    with _user_client(cluster, plain, f"https://{cluster.auth_addr}") as client:
        answer = client.get("/v1/resources/user", headers={"Certgate-Forwarded-Cert": der})
    assert answer.status_code == 403
    assert answer.json()["message"] == (
        "access denied: forwarded identities are accepted only from proxies"
    )


def test_the_proxy_replaces_client_supplied_identity_headers(cluster: Cluster) -> None:
    plain = cluster.add_user("header-injector", roles="access")
    cluster.login(plain)
    admin_cert = (cluster.data_dir / "admin" / "tls.crt").read_text()
    der = base64.b64encode(ssl.PEM_cert_to_DER_cert(admin_cert)).decode()
    with _user_client(cluster, plain, f"https://{cluster.proxy_addr}") as client:
        answer = client.get(
            "/v1/api/resources/user",
            headers={"Certgate-Forwarded-Cert": der, "Certgate-Client-Addr": "10.0.0.1"},
        )
        assert answer.status_code == 403
        assert 'do not allow "list" on "user"' in answer.json()["message"]
        whoami = client.get("/v1/api/whoami").json()
    assert whoami["username"] == "header-injector"
    assert whoami["kind"] == "user"


def test_the_api_through_the_proxy_needs_a_certificate(cluster: Cluster) -> None:
    status, body = cluster.web("GET", "/v1/api/resources/user")
    assert status == 401
    assert body["message"] == "access denied: log in first (cgsh login)"


def test_an_expired_login_is_refused_by_the_api(cluster: Cluster) -> None:
    short = cluster.add_user("short-lived", roles="access,editor")
    cluster.login(short, "--ttl=2s")
    tls = x509.load_pem_x509_certificate((short.home / "keys" / "tls.crt").read_bytes())
    expires = tls.not_valid_after_utc
    assert expires - datetime.now(UTC) < timedelta(minutes=1), "not the short certificate"
    eventually(lambda: datetime.now(UTC) > expires + timedelta(seconds=1), timeout=30)
    result = remote_cgctl(short, "users", "ls", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    status = cluster.cgsh(short, "status").stdout
    assert "EXPIRED" in status
