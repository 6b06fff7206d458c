"""A plugin's identity (`cgctl auth sign --user`) and the `access-plugin` preset: it
follows access requests and can do nothing else; and no user without the right can
sign an identity for anyone — written from the side of someone trying."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from certgate.errors import AccessDenied
from certgate.rpc.auth_client import AuthClient
from certgate.rpc.identity_files import IdentityFiles, new_key
from tests.plugins.live import api, create_request, plugin_identity, setup_people
from tests.support.cluster import BIN, Cluster, User, run


def as_identity(cluster: Cluster, directory: Path) -> AuthClient:
    identity = IdentityFiles.load(directory)
    return AuthClient(f"https://{cluster.proxy_addr}", identity.tls_context())


def remote_cgctl(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CERTGATE_HOME": str(user.home), "CERTGATE_DATA_DIR": ""}
    return run([str(BIN / "cgctl"), *args], env=env, check=False)


def test_the_plugin_identity_reads_and_watches_requests_and_nothing_else(
    cluster: Cluster, workdir: Path
) -> None:
    people = setup_people(cluster, workdir)
    rid = create_request(cluster, people.alice, reason="for the plugin")["metadata"]["name"]
    out = plugin_identity(cluster, workdir, "watcher-plugin")
    files = sorted(p.name for p in out.iterdir())
    assert {"key.pem", "tls.crt", "cas.pem", "bundle.json", "key-cert.pub"} <= set(files)
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    bundle = json.loads((out / "bundle.json").read_text())
    assert bundle["identity"]["username"] == "watcher-plugin"
    assert bundle["identity"]["roles"] == ["access-plugin"]
    expires = datetime.fromisoformat(bundle["identity"]["expires"])
    # The preset allows 30 days: asked for 720h, granted 720h (less a little).
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)

    # Through the proxy, trusting the cluster CA from the identity itself (no --insecure).
    client = as_identity(cluster, out)
    try:
        listed = client.call("GET", "/v1/api/resources/access_request")
        assert rid in {r["metadata"]["name"] for r in listed}
        one = client.call("GET", f"/v1/api/resources/access_request/{rid}")
        assert one[0]["spec"]["reason"] == "for the plugin"
        for path in ("/v1/api/resources/user", "/v1/api/resources/role", "/v1/api/events"):
            with pytest.raises(AccessDenied):
                client.call("GET", path)
        with pytest.raises(AccessDenied):
            client.call("DELETE", f"/v1/api/resources/access_request/{rid}")
        with pytest.raises(AccessDenied):
            client.call(
                "POST", f"/v1/api/access_requests/{rid}/reviews", json={"verdict": "approve"}
            )
        with pytest.raises(AccessDenied):
            client.call(
                "POST", "/v1/api/users/watcher-plugin/certs", json={"public_key": new_key()[1]}
            )
    finally:
        client.close()

    # The watch stream: requests yes, users no.
    identity = IdentityFiles.load(out)
    with httpx.Client(verify=identity.tls_context(), timeout=10) as http:
        base = f"https://{cluster.proxy_addr}/v1/api/watch"
        with http.stream("GET", base, params={"kinds": "access_request"}) as stream:
            assert stream.status_code == 200
            first = json.loads(next(stream.iter_lines()))
        assert first["type"] == "snapshot"
        assert rid in {r["metadata"]["name"] for r in first["items"]["access_request"]}
        refused = http.get(base, params={"kinds": "user"})
        assert refused.status_code == 403
        refused = http.get(base, params={"kinds": "access_request,role"})
        assert refused.status_code == 403


def test_only_those_who_may_sign_can_make_an_identity_for_someone(
    cluster: Cluster, workdir: Path
) -> None:
    plain = cluster.add_user("sign-plain", roles="access")
    cluster.login(plain)
    # Someone with only the access preset tries to mint an editor's identity.
    out = workdir / "stolen"
    result = remote_cgctl(plain, "auth", "sign", "--user=admin-wannabe", f"--out={out}")
    assert result.returncode == 3, result.stderr
    assert 'do not allow "create" on "cert_authority"' in result.stderr
    assert not (out / "bundle.json").exists()
    # Straight at the API, with a key of their own: the same refusal.
    client = api(cluster, plain)
    try:
        with pytest.raises(AccessDenied):
            client.call("POST", "/v1/api/users/sign-plain/certs", json={"public_key": new_key()[1]})
    finally:
        client.close()

    # An editor through the proxy may; the audit log says who asked.
    editor = cluster.add_user("sign-editor", roles="editor")
    cluster.login(editor)
    cluster.cgctl("users", "add", "sign-bot", "--roles=access-plugin")
    result = remote_cgctl(editor, "auth", "sign", "--user=sign-bot", "--ttl=1h", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "Wrote an identity for sign-bot (roles access-plugin)" in result.stdout
    events = cluster.cgctl("audit", "ls", "--event=cert.create", "--format=json").stdout
    signed = [e for e in json.loads(events) if e.get("user") == "sign-bot"]
    assert signed and signed[0]["issued_by"] == "sign-editor"

    # An existing identity is not replaced by accident; a locked user gets none.
    again = remote_cgctl(editor, "auth", "sign", "--user=sign-bot", f"--out={out}")
    assert again.returncode != 0 and "--overwrite" in again.stderr
    cluster.cgctl("lock", "--user=sign-bot", "--message=compromised")
    locked = cluster.cgctl("auth", "sign", "--user=sign-bot", f"--out={workdir / 'x'}", check=False)
    assert locked.returncode == 3 and "compromised" in locked.stderr
    missing = cluster.cgctl("auth", "sign", "--user=nobody", f"--out={workdir / 'y'}", check=False)
    assert missing.returncode == 4 and 'user "nobody" not found' in missing.stderr
    both = cluster.cgctl("auth", "sign", "--user=a", "--host=b", "--out=z", check=False)
    assert both.returncode == 2 and "either --host or --user" in both.stderr
