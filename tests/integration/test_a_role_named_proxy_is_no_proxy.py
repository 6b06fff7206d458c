"""Who is a service is decided by the CA key that signed a caller's certificate.

With a cluster name longer than a common name, the host and user TLS CAs once had the
same subject; a user holding a role merely *named* `Proxy` then counted as the proxy
and could pass on another user's certificate and act as that user.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import BIN, Cluster, User, run

# 68 characters: "<cluster> host_tls CA" and "<cluster> user_tls CA" cut at 64 bytes were one.
LONG_NAME = "a-cluster-whose-name-is-longer-than-any-common-name.example.internal"
PROXY_ROLE = "kind: role\nmetadata: {name: Proxy}\nspec: {allow: {logins: [mallory]}}\n"


@pytest.fixture(scope="module")
def long_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("long-cluster"), cluster_name=LONG_NAME)
    c.start()
    yield c
    c.stop()


def _client(user: User, base: str) -> httpx.Client:
    keys = user.home / "keys"
    context = ssl.create_default_context(cafile=str(keys / "cas.pem"))
    context.check_hostname = False
    context.load_cert_chain(str(keys / "tls.crt"), str(keys / "key.pem"))
    return httpx.Client(base_url=base, verify=context, timeout=10)


def test_a_user_with_a_role_named_proxy_cannot_act_as_another_user(
    long_cluster: Cluster,
) -> None:
    long_cluster.cgctl("create", "-f", "-", input=PROXY_ROLE)
    mallory = long_cluster.add_user("mallory", roles="Proxy")
    alice = long_cluster.add_user("alice", roles="access,editor")
    long_cluster.login(mallory)
    long_cluster.login(alice)
    alice_cert = (alice.home / "keys" / "tls.crt").read_text()
    forwarded = base64.b64encode(ssl.PEM_cert_to_DER_cert(alice_cert)).decode()
    auth = f"https://{long_cluster.auth_addr}"

    # Through the real proxy, alice's certificate is passed on and may list users.
    with _client(alice, f"https://{long_cluster.proxy_addr}") as client:
        assert client.get("/v1/api/resources/user").status_code == 200
    with _client(mallory, auth) as client:
        # Passing alice's certificate on is for proxies only.
        answer = client.get("/v1/resources/user", headers={"Certgate-Forwarded-Cert": forwarded})
        assert answer.status_code == 403, answer.text
        assert answer.json()["message"] == (
            "access denied: forwarded identities are accepted only from proxies"
        )
        # Auth knows mallory for what she is: a user.
        whoami = client.get("/v1/whoami").json()
        assert (whoami["username"], whoami["kind"]) == ("mallory", "user")


def test_a_cluster_name_no_certificate_can_carry_is_refused_at_start(tmp_path: Path) -> None:
    result = run(
        [str(BIN / "certgate"), "start", "--roles", "auth", "--data-dir", str(tmp_path),
         "--cluster-name", "my cluster", "--auth-listen", "127.0.0.1:0", "--diag-addr", ""],
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "invalid cluster name 'my cluster'" in result.stderr
    assert "Traceback" not in result.stderr
