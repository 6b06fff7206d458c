"""After the certificates of a login expire, every command says so and what to do,
before dialling; and a certificate the proxy refuses during the TLS handshake (expired
by the cluster's clock, or from a CA it does not trust) is reported as that, never as
`cannot reach https://...: Server disconnected without sending a response`."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

from tests.support.cluster import BIN, Cluster, User, run
from tests.support.wait import eventually


def _remote_cgctl(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CERTGATE_HOME": str(user.home), "CERTGATE_DATA_DIR": ""}
    return run([str(BIN / "cgctl"), *args], env=env, check=False)


def _expiry(user: User) -> datetime:
    bundle = json.loads((user.home / "keys" / "bundle.json").read_text())
    return datetime.fromisoformat(bundle["identity"]["expires"])


def test_every_command_says_the_certificate_expired(cluster: Cluster) -> None:
    dana = cluster.add_user("expiry-dana", roles="access,auditor", logins="dana")
    cluster.login(dana, "--ttl=3s")
    # While valid, the same commands reach the cluster.
    assert cluster.cgsh(dana, "recordings", "ls", check=False).returncode == 0
    expires = _expiry(dana)
    assert expires - datetime.now(UTC) < timedelta(seconds=4)
    expected = f"error: your certificate expired at {expires:%Y-%m-%d %H:%M:%S} UTC: run cgsh login"

    eventually(lambda: cluster.cgsh(dana, "ls", check=False).stderr.strip() == expected)
    for result in (
        cluster.cgsh(dana, "ls", check=False),
        cluster.cgsh(dana, "ssh", "dana@node-1", "true", check=False),
        cluster.cgsh(dana, "recordings", "ls", check=False),
        _remote_cgctl(dana, "audit", "ls", "--limit=1"),
    ):
        assert result.returncode == 3, result
        assert result.stderr.strip() == expected
    assert "EXPIRED: run cgsh login" in cluster.cgsh(dana, "status").stdout


def test_a_certificate_the_proxy_refuses_is_not_a_network_error(cluster: Cluster) -> None:
    erin = cluster.add_user("expiry-erin", roles="access", logins="erin")
    cluster.login(erin, "--ttl=3s")
    expires = _expiry(erin)
    eventually(lambda: "expired" in cluster.cgsh(erin, "ls", check=False).stderr)

    # This machine's clock now says the certificate is good for another hour (as a
    # clock running behind would), so the client dials; the proxy's TLS refuses it.
    path = erin.home / "keys" / "bundle.json"
    bundle = json.loads(path.read_text())
    bundle["identity"]["expires"] = (expires + timedelta(hours=1)).isoformat()
    path.write_text(json.dumps(bundle))
    for result in (
        cluster.cgsh(erin, "ls", check=False),
        _remote_cgctl(erin, "users", "ls"),
    ):
        assert result.returncode == 3, result
        message = result.stderr.strip()
        assert message.startswith(
            f"error: the proxy at {cluster.proxy_addr} refused your certificate"
        ), message
        assert message.endswith("run cgsh login")
        assert "cannot reach" not in message and "disconnected" not in message
