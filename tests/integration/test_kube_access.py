"""Users reach Kubernetes with plain kubectl through certgate, under their roles and locks.

Real certgate processes (auth + proxy, and a kube service that joined with a token),
real kubectl 1.37, and the API-server stand-in (tests/support/kube_standin.py), which
enforces its own RBAC on the impersonated user and groups and records the headers it got.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from tests.support.cluster import BIN, Cluster, User
from tests.support.kube_cluster import KUBECTL, KubeSetup
from tests.support.kube_standin import Grant, KubeStandin
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
metadata: {name: kube-viewer}
spec:
  allow:
    kubernetes_labels: {env: dev}
    kubernetes_groups: [viewers, editors]
---
kind: role
version: v1
metadata: {name: kube-admin}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
    rules: [{resources: [session], verbs: [list, read]}]
---
kind: role
version: v1
metadata: {name: kube-idle}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
  options: {client_idle_timeout: 2s}
---
kind: role
version: v1
metadata: {name: kube-strict}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
  options: {record_session: {k8s: strict}}
---
kind: role
version: v1
metadata: {name: kube-dev-pods}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
    kubernetes_resources: [{kind: pod, namespace: dev, name: "*", verbs: ["*"]}]
"""


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeSetup]:
    workdir = tmp_path_factory.mktemp("kube")
    standin = KubeStandin(workdir)
    standin.grants += [
        Grant(("group:viewers",), verbs=("get", "list", "watch")),
        Grant(("group:system:masters",)),
    ]
    standin.start()
    cluster = Cluster(workdir)
    cluster.start()
    setup = KubeSetup(cluster, standin, cluster.kube_proxy_port)
    try:
        setup.start_kube_service()
        roles = workdir / "roles.yaml"
        roles.write_text(ROLES)
        cluster.cgctl("create", str(roles))
        yield setup
    finally:
        cluster.stop()
        standin.stop()


def _user(kube: KubeSetup, name: str, roles: str) -> User:
    user = kube.cluster.add_user(name, roles=roles)
    kube.cluster.login(user)
    eventually(lambda: "dev-cluster" in kube.cluster.cgsh(user, "kube", "ls").stdout)
    result = kube.kube_login(user)
    assert result.returncode == 0, result.stderr
    return user


@pytest.fixture(scope="module")
def contractor(kube: KubeSetup) -> User:
    return _user(kube, "contractor", "kube-contractor")


@pytest.fixture(scope="module")
def viewer(kube: KubeSetup) -> User:
    return _user(kube, "viewer", "kube-viewer")


@pytest.fixture(scope="module")
def admin(kube: KubeSetup) -> User:
    return _user(kube, "kadmin", "kube-admin")


def test_kube_ls_lists_the_cluster_with_its_labels(kube: KubeSetup, viewer: User) -> None:
    out = kube.cgsh(viewer, "kube", "ls", "--format=json").stdout
    assert {"name": "dev-cluster", "labels": {"env": "dev"}, "selected": True} in json.loads(out)
    config = kube.kubeconfig(viewer)
    assert config.stat().st_mode & 0o777 == 0o600
    assert "certgate.client.kube_credentials" in config.read_text()
    typo = kube.kube_login(viewer, "dev-clustr")
    assert typo.returncode == 4
    assert typo.stderr.strip() == (
        'error: kubernetes cluster "dev-clustr" not found; did you mean "dev-cluster"?'
    )
    other = kube.kube_login(viewer, "prod")
    assert other.stderr.strip() == 'error: kubernetes cluster "prod" not found: see cgsh kube ls'


def test_get_nodes_is_refused_without_groups(kube: KubeSetup, contractor: User) -> None:
    result = kube.kubectl(contractor, "get", "nodes")
    assert result.returncode != 0
    assert 'user "contractor" has no assigned groups or users' in result.stderr
    reached = [s for s in kube.standin.seen("/api/v1/nodes")]
    assert all(s.headers.get("impersonate-user") != ["contractor"] for s in reached)

    def refusals() -> list[dict[str, Any]]:
        out = kube.cluster.cgctl("audit", "ls", "--event=kube.request", "--format=json").stdout
        return [
            e
            for e in json.loads(out)
            if e.get("user") == "contractor" and e.get("path") == "/api/v1/nodes"
        ]

    refused = eventually(refusals)[-1]
    assert refused["status"] == 403 and "no assigned groups" in refused["reason"]


def test_get_nodes_works_for_a_role_with_groups(kube: KubeSetup, viewer: User) -> None:
    result = kube.kubectl(viewer, "get", "nodes")
    assert result.returncode == 0, result.stderr
    assert "kube-node-1" in result.stdout
    seen = [s for s in kube.standin.seen("/api/v1/nodes") if s.headers.get("impersonate-user")]
    assert seen[-1].headers["impersonate-user"] == ["viewer"]
    assert set(seen[-1].headers["impersonate-group"]) == {
        "viewers",
        "editors",
        "system:authenticated",
    }
    # The API server sees certgate's own credentials, never the user's.
    assert seen[-1].headers["authorization"] == ["Bearer standin-admin-token"]


def test_as_group_may_narrow_but_not_widen(kube: KubeSetup, viewer: User) -> None:
    narrowed = kube.kubectl(viewer, "get", "nodes", "--as=viewer", "--as-group=viewers")
    assert narrowed.returncode == 0, narrowed.stderr
    seen = [s for s in kube.standin.seen("/api/v1/nodes") if s.headers.get("impersonate-user")]
    assert seen[-1].headers["impersonate-group"] == ["viewers", "system:authenticated"]

    widened = kube.kubectl(viewer, "get", "nodes", "--as=viewer", "--as-group=system:masters")
    assert widened.returncode != 0
    assert '--as-group "system:masters" is not allowed by your roles' in widened.stderr
    other_user = kube.kubectl(viewer, "get", "nodes", "--as=admin")
    assert other_user.returncode != 0
    assert '--as "admin" is not allowed' in other_user.stderr


def _raw_client(kube: KubeSetup, user: User) -> tuple[ssl.SSLContext, Any]:
    """A client that writes its own requests with the user's certificate, not kubectl:
    its TLS context and `call(path, headers) -> status`."""
    creds = json.loads(
        subprocess.run(
            [str(BIN / "cgsh"), "kube", "credentials"], capture_output=True, text=True,
            env=kube.env(user), check=True,
        ).stdout
    )["status"]  # fmt: skip
    cert = user.home / "attacker.crt"
    key = user.home / "attacker.key"
    cert.write_text(creds["clientCertificateData"])
    key.write_text(creds["clientKeyData"])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(cert), str(key))
    import http.client

    def call(path: str, headers: dict[str, str]) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", kube.kube_proxy_port, context=context)
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    return context, call


def test_injected_impersonation_headers_never_reach_the_api_server(
    kube: KubeSetup, viewer: User
) -> None:
    """A client that writes its own Impersonate-* headers, not through kubectl's flags."""
    context, call = _raw_client(kube, viewer)

    marker = "/k8s/dev-cluster/api/v1/namespaces?injected=1"
    headers = {
        "Impersonate-Uid": "0",
        "Impersonate-Extra-Scopes": "everything",
        "X-Certgate-Identity": json.dumps({"username": "kadmin", "roles": ["kube-admin"]}),
    }
    assert call(marker, headers) == 200
    seen = kube.standin.seen("injected=1")
    assert seen, "the stand-in would have seen the request"
    got = seen[-1].headers
    assert got["impersonate-user"] == ["viewer"]
    assert not [k for k in got if k.startswith(("impersonate-extra", "impersonate-uid"))]
    assert not [k for k in got if k.startswith("x-certgate")]
    # Asking for a group outright, as a header, is checked like --as-group.
    assert call(marker, {"Impersonate-Group": "system:masters"}) == 403

    # A path the API server would decode (%61pi is api) is refused, not judged as
    # discovery and passed on unfiltered.
    assert call("/k8s/dev-cluster/%61pi/v1/namespaces?encoded=1", {}) == 400
    assert not kube.standin.seen("encoded=1")

    # Headers hidden behind a bare LF (a Go server ends a line there) never pass.
    import socket

    hidden = "/k8s/dev-cluster/api/v1/namespaces?hidden=1"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", kube.kube_proxy_port), timeout=30) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(
                f"GET {hidden} HTTP/1.1\r\nHost: x\r\n"
                "X-A: x\nImpersonate-User: system:admin\nImpersonate-Group: system:masters\r\n"
                "\r\n".encode()
            )
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := tls.recv(65536):
                    answer += chunk
    # Refused by the proxy's parser at once: closed, nothing sent on (before, it went
    # on to the API server, which a Python stand-in left hanging and Go would obey).
    assert answer == b"" and time.monotonic() - started < 5
    assert not kube.standin.seen("hidden=1")


def _exec_terminal(kube: KubeSetup, user: User, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        str(KUBECTL),
        list(args),
        env={**kube.env(user), "TERM": "xterm"},
        dimensions=(30, 100),
        timeout=20,
    )
    child.logfile_read = io.BytesIO()
    return child


def _recordings(kube: KubeSetup, user: User) -> list[dict[str, Any]]:
    out = kube.cluster.cgsh(user, "recordings", "ls", "--format=json").stdout
    return list(json.loads(out))


def test_exec_it_works_is_recorded_and_replays(kube: KubeSetup, admin: User) -> None:
    child = _exec_terminal(kube, admin, "-n", "default", "exec", "-it", "shell", "--", "/bin/sh")
    child.expect(r"\$ ")
    child.sendline("echo recorded-$((6*7))")
    child.expect("recorded-42")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    found = eventually(
        lambda: next((r for r in _recordings(kube, admin) if r["user"] == "kadmin"), None)
    )
    played = kube.cluster.cgsh(admin, "play", found["id"], "--speed=100").stdout
    assert "recorded-42" in played
    document = json.loads(kube.cluster.cgsh(admin, "play", found["id"], "--format=json").stdout)
    # kubectl sent the terminal's size (100x30) on the resize channel: it is in the cast.
    assert {"type": "r", "data": "100x30"} in [
        {"type": e["type"], "data": e["data"]} for e in document["events"]
    ]

    def of_kadmin(event: str, field: str, value: str) -> list[dict[str, Any]]:
        out = kube.cluster.cgctl("audit", "ls", f"--event={event}", "--format=json").stdout
        return [e for e in json.loads(out) if e.get(field) == value]

    # Audit events reach auth up to ~1 s after they happen (docs/audit.md).
    start = eventually(lambda: of_kadmin("session.start", "user", "kadmin"))[-1]
    assert start["kubernetes_cluster"] == "dev-cluster"
    assert start["kubernetes_namespace"] == "default"
    assert start["kubernetes_pod"] == "shell"
    end = eventually(lambda: of_kadmin("session.end", "session_id", start["session_id"]))[-1]
    assert (end["kubernetes_cluster"], end["kubernetes_pod"]) == ("dev-cluster", "shell")


def test_a_live_exec_session_is_listed(kube: KubeSetup, admin: User) -> None:
    """Joining it is test_kube_join.py's."""

    def mine() -> list[dict[str, Any]]:
        out = kube.cluster.cgsh(admin, "sessions", "ls", "--format=json").stdout
        return [s for s in json.loads(out) if s["user"] == "kadmin"]

    assert mine() == []
    child = _exec_terminal(kube, admin, "-n", "default", "exec", "-it", "shell", "--", "/bin/sh")
    child.expect(r"\$ ")
    [live] = eventually(mine)
    assert (live["kind"], live["node"], live["session_kind"]) == ("k8s", "dev-cluster", "exec")
    assert live["command"] == "/bin/sh"
    table = kube.cluster.cgsh(admin, "sessions", "ls").stdout
    assert live["id"] in table and "dev-cluster" in table
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    eventually(lambda: mine() == [])


def test_an_idle_exec_session_ends_after_the_roles_timeout(kube: KubeSetup) -> None:
    user = _user(kube, "idler", "kube-idle")
    child = _exec_terminal(kube, user, "-n", "default", "exec", "-it", "shell", "--", "/bin/sh")
    child.expect(r"\$ ")
    child.sendline("echo typing")
    child.expect("typing")  # the session runs; nothing more is typed from here
    child.expect(r"no input for 2s \(client_idle_timeout of your roles\)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0


def test_a_lock_ends_a_running_exec_and_refuses_the_next_call(
    kube: KubeSetup, tmp_path: Any
) -> None:
    locked = _user(kube, "locked-admin", "kube-admin")
    child = _exec_terminal(kube, locked, "-n", "default", "exec", "-it", "shell", "--", "/bin/sh")
    child.expect(r"\$ ")
    child.sendline("echo alive")
    child.expect("alive")  # the session runs: the lock below is what ends it
    kube.cluster.cgctl("lock", "--user=locked-admin", "--message=incident 42")
    child.expect("incident 42")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    refused = kube.kubectl(locked, "get", "pods", "-A")
    assert refused.returncode != 0
    assert "incident 42" in refused.stderr


def test_kubernetes_resources_limit_exec_to_one_namespace_and_filter_lists(
    kube: KubeSetup,
) -> None:
    user = _user(kube, "devpods", "kube-dev-pods")
    everything = kube.kubectl(user, "get", "pods", "-A")
    assert everything.returncode == 0, everything.stderr
    assert "web" in everything.stdout and "db" in everything.stdout
    assert "api" not in everything.stdout and "shell" not in everything.stdout

    inside = kube.kubectl(user, "-n", "dev", "exec", "web", "--", "echo", "inside")
    assert inside.returncode == 0, inside.stderr
    assert "inside" in inside.stdout
    outside = kube.kubectl(user, "-n", "prod", "exec", "api", "--", "echo", "outside")
    assert outside.returncode != 0
    assert "kubernetes_resources" in outside.stderr
    assert "outside" not in outside.stdout

    # Asking for YAML or protobuf, which the filter could not read: the API server is
    # asked for JSON (and what is not JSON is refused, tests/kube).
    _, call = _raw_client(kube, user)
    accept = "application/vnd.kubernetes.protobuf, application/yaml"
    assert call("/k8s/dev-cluster/api/v1/pods?asked=yaml", {"Accept": accept}) == 200
    [seen] = kube.standin.seen("asked=yaml")
    assert seen.headers["accept"] == ["application/json"]


def test_logs_follow_streams_lines_as_they_come(kube: KubeSetup, viewer: User) -> None:
    # Streamed answers one after another, on connections certgate keeps between runs.
    for _ in range(3):
        plain = kube.kubectl(viewer, "-n", "dev", "logs", "web")
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout.startswith("web line 0\n")
    process = kube.kubectl_process(viewer, "-n", "dev", "logs", "-f", "web")
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "web line 0"
        kube.standin.append_log("dev", "web", "a fresh line")
        lines = [process.stdout.readline().strip() for _ in range(3)]
        assert lines[-1] == "a fresh line"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_logout_removes_what_cgsh_wrote_and_nothing_else(kube: KubeSetup) -> None:
    user = _user(kube, "leaver", "kube-viewer")
    config = kube.kubeconfig(user)
    text = config.read_text()
    config.write_text(
        text.replace("clusters:", "clusters:\n- name: mine\n  cluster: {server: 'https://x'}", 1)
    )
    assert kube.cluster.cgsh(user, "logout").returncode == 0
    left = config.read_text()
    assert "mine" in left
    assert "certgate" not in left
    assert os.stat(config).st_mode & 0o777 == 0o600


def test_watch_streams_and_is_filtered_by_resources(kube: KubeSetup) -> None:
    user = _user(kube, "watcher", "kube-dev-pods")
    process = kube.kubectl_process(user, "get", "pods", "-A", "-w", "--output-watch-events")
    try:
        assert process.stdout is not None
        seen: list[str] = []

        def shown_pods() -> list[str]:
            return [w for line in seen for w in line.split() if w in ("web", "db", "api", "shell")]

        # The list, then the watch's own events (the stand-in sends every pod as ADDED):
        # web and db twice each, in whatever order, and nothing else.
        while len(shown_pods()) < 4:
            line = process.stdout.readline()
            assert line, f"the watch ended early: {seen}"
            seen.append(line)
        assert kube.standin.seen("watch=true"), "the watch reached the API server"
        # The watch is still open: the stand-in holds it, certgate streams it.
        assert process.poll() is None
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    shown = "".join(seen) + out
    assert "api" not in shown.split() and "shell" not in shown.split()


def test_a_cluster_outside_the_roles_labels_is_neither_listed_nor_reachable(
    kube: KubeSetup, viewer: User
) -> None:
    (kube.cluster.workdir / "prod-only.yaml").write_text(
        "kind: role\nversion: v1\nmetadata: {name: kube-prod-only}\n"
        "spec: {allow: {kubernetes_labels: {env: prod}, kubernetes_groups: [viewers]}}\n"
    )
    kube.cluster.cgctl("create", str(kube.cluster.workdir / "prod-only.yaml"))
    outsider = kube.cluster.add_user("outsider", roles="kube-prod-only")
    kube.cluster.login(outsider)
    assert json.loads(kube.cluster.cgsh(outsider, "kube", "ls", "--format=json").stdout) == []
    refused = kube.kube_login(outsider)
    assert refused.returncode != 0
    assert 'kubernetes cluster "dev-cluster" not found' in refused.stderr
    # With the viewer's kubeconfig entry copied over, kubectl gets the same answer.
    config = kube.kubeconfig(outsider)
    config.write_text(
        kube.kubeconfig(viewer).read_text().replace(str(viewer.home), str(outsider.home))
    )
    before = len(kube.standin.requests)
    result = kube.kubectl(outsider, "get", "pods", "-n", "dev")
    assert result.returncode != 0
    assert "(NotFound)" in result.stderr  # kubectl shows no message for a 404 in discovery
    assert not [s for s in kube.standin.requests[before:] if "outsider" in str(s.headers)]


def test_the_kube_service_only_takes_calls_from_proxies(kube: KubeSetup, viewer: User) -> None:
    clusters = json.loads(kube.cluster.cgctl("get", "kube_cluster", "--format=json").stdout)
    addr = next(c["spec"]["addr"] for c in clusters if c["metadata"]["name"] == "dev-cluster")
    host, port = addr.rsplit(":", 1)
    keys = viewer.home / "keys"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(keys / "tls.crt"), str(keys / "key.pem"))
    import http.client

    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    headers = {
        "X-Certgate-Identity": json.dumps(
            {"username": "viewer", "roles": ["kube-admin"], "expires": "2099-01-01T00:00:00+00:00"}
        ),
        "X-Certgate-Cluster": "dev-cluster",
    }
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        conn.request("GET", "/api/v1/namespaces?direct=1", headers=headers)
        conn.getresponse().read()
    conn.close()
    assert not kube.standin.seen("direct=1")


def _user_tls(user: User) -> ssl.SSLContext:
    keys = user.home / "keys"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(keys / "tls.crt"), str(keys / "key.pem"))
    return context


def test_an_old_kubectls_spdy_exec_is_relayed(kube: KubeSetup, admin: User) -> None:
    """An API server that refuses exec's WebSocket upgrade: kubectl falls back to
    SPDY/3.1, which certgate relays as is (best_effort recording: not recorded)."""
    before = kube.standin.spdy_execs
    kube.standin.exec_over_spdy = True
    try:
        script = "echo spdy-$((6*7)); echo to-stderr >&2; read line; echo got-$line; exit 3"
        result = kube.kubectl(
            admin, "-n", "default", "exec", "-i", "shell", "--", "sh", "-c", script,
            input="piped\n",
        )  # fmt: skip
    finally:
        kube.standin.exec_over_spdy = False
    assert kube.standin.spdy_execs == before + 1, result.stderr
    assert "spdy-42" in result.stdout and "got-piped" in result.stdout
    assert "to-stderr" in result.stderr
    assert result.returncode == 3


def test_an_unrecordable_spdy_exec_is_refused_when_recording_is_strict(kube: KubeSetup) -> None:
    """An old kubectl's SPDY exec cannot be recorded: strict roles refuse it."""
    import http.client

    user = _user(kube, "strict", "kube-strict")
    conn = http.client.HTTPSConnection(
        "127.0.0.1", kube.kube_proxy_port, context=_user_tls(user), timeout=10
    )
    conn.request(
        "POST",
        "/k8s/dev-cluster/api/v1/namespaces/default/pods/shell/exec?command=id&stdout=true",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "SPDY/3.1",
            "X-Stream-Protocol-Version": "v4.channel.k8s.io",
        },
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 403
    assert "record_session.k8s: strict" in body["message"]


def test_a_lock_ends_a_running_port_forward_stream(kube: KubeSetup) -> None:
    """The port-forward upgrade held open through certgate (the stand-in echoes instead
    of speaking SPDY), then cut by a lock."""
    import asyncio

    import aiohttp

    user = _user(kube, "forwarder", "kube-admin")
    url = (
        f"https://127.0.0.1:{kube.kube_proxy_port}/k8s/dev-cluster"
        "/api/v1/namespaces/dev/pods/web/portforward?ports=0"
    )

    async def scenario() -> str:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(
                url, ssl=_user_tls(user), protocols=("SPDY/3.1+portforward.k8s.io",)
            ) as ws:
                await ws.send_bytes(b"ping")
                echoed = await asyncio.wait_for(ws.receive(), 10)
                assert echoed.data == b"ping"  # the stream is up: the lock is what ends it
                await asyncio.to_thread(
                    kube.cluster.cgctl, "lock", "--user=forwarder", "--message=forward cut"
                )
                while True:
                    msg = await asyncio.wait_for(ws.receive(), 15)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        return "closed"
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        return "closed"

    assert asyncio.run(scenario()) == "closed"


def test_a_new_login_counts_on_the_next_kubectl_call_without_a_new_kubeconfig(
    kube: KubeSetup,
) -> None:
    user = _user(kube, "promoted", "kube-contractor")
    refused = kube.kubectl(user, "get", "nodes")
    assert "has no assigned groups or users" in refused.stderr
    config_before = kube.kubeconfig(user).read_text()

    document = kube.cluster.cgctl("get", "user/promoted", "--format=yaml").stdout
    changed = kube.cluster.workdir / "promoted.yaml"
    changed.write_text(document.replace("kube-contractor", "kube-viewer"))
    kube.cluster.cgctl("create", "--force", "-f", str(changed))
    kube.cluster.login(user)  # new certificates with the new roles, as after a request
    allowed = kube.kubectl(user, "get", "nodes")
    assert allowed.returncode == 0, allowed.stderr
    assert "kube-node-1" in allowed.stdout
    assert kube.kubeconfig(user).read_text() == config_before


def _forwarded_echo(port: int) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"through the tunnel")
        return sock.recv(1024)


def test_port_forward_works_and_a_lock_ends_it(kube: KubeSetup) -> None:
    import re

    user = _user(kube, "tunneler", "kube-admin")
    process = kube.kubectl_process(user, "-n", "dev", "port-forward", "pod/web", ":80")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+) -> 80", line)
        assert match, line
        local = int(match.group(1))
        assert _forwarded_echo(local) == b"through the tunnel"
        assert _forwarded_echo(local) == b"through the tunnel"  # a second connection
        assert process.poll() is None  # still forwarding: the lock is what ends it
        kube.cluster.cgctl("lock", "--user=tunneler", "--message=tunnel closed")
        eventually(lambda: process.poll() is not None, timeout=20)
    finally:
        process.terminate()
        process.communicate(timeout=10)
    again = kube.kubectl(user, "-n", "dev", "get", "pods")
    assert "tunnel closed" in again.stderr


def test_a_lock_ends_a_running_watch_and_logs_follow(kube: KubeSetup) -> None:
    """Plain streaming answers, not only exec sessions, end at once on a lock although
    the certificate is still valid."""
    user = _user(kube, "streamer", "kube-viewer")
    watch = kube.kubectl_process(user, "get", "pods", "-n", "dev", "-w")
    follow = kube.kubectl_process(user, "-n", "dev", "logs", "-f", "web")
    try:
        assert watch.stdout is not None and follow.stdout is not None
        assert watch.stdout.readline()  # streaming
        assert follow.stdout.readline().strip() == "web line 0"
        assert watch.poll() is None and follow.poll() is None  # the lock is what ends them
        kube.cluster.cgctl("lock", "--user=streamer", "--message=streams cut")
        eventually(lambda: watch.poll() is not None and follow.poll() is not None, timeout=10)
    finally:
        for process in (watch, follow):
            process.kill()
            process.communicate(timeout=10)

    # Both calls are in the audit log, saying how they ended (a call is an event also
    # when its answer never completes).
    def cut_calls() -> list[dict[str, Any]]:
        out = kube.cluster.cgctl("audit", "ls", "--event=kube.request", "--format=json").stdout
        return [e for e in json.loads(out) if e.get("user") == "streamer" and "ended" in e]

    ended = eventually(lambda: len(cut_calls()) >= 2 and cut_calls(), timeout=15)
    assert {e["verb"] for e in ended} >= {"watch", "get"}
    assert all(e["ended"].startswith("cut: ") for e in ended), ended


def test_a_kept_alive_connection_does_not_outlive_its_certificate(kube: KubeSetup) -> None:
    """The TLS handshake checked the certificate once; each call on the connection
    afterwards is checked again."""
    import http.client

    user = kube.cluster.add_user("shortlived", roles="kube-viewer")
    kube.cluster.login(user, "--ttl=6s")
    context, _ = _raw_client(kube, user)
    conn = http.client.HTTPSConnection("127.0.0.1", kube.kube_proxy_port, context=context)
    try:
        conn.request("GET", "/k8s/dev-cluster/api/v1/namespaces/dev/pods")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        time.sleep(7)
        conn.request("GET", "/k8s/dev-cluster/api/v1/namespaces/dev/pods")
        second = conn.getresponse()
        body = second.read().decode()
        assert second.status == 403 and "certificate expired" in body
    finally:
        conn.close()


def test_a_watch_left_midway_never_hands_its_connection_to_another_user(
    kube: KubeSetup, viewer: User, admin: User
) -> None:
    """Upstream connections are pooled between kubectl runs: one left in the middle of
    an answer (a watch the user interrupted) is closed at once, up to the API server,
    and never serves the next user."""
    for _ in range(2):
        process = kube.kubectl_process(viewer, "get", "pods", "-n", "dev", "-w")
        assert process.stdout is not None
        assert process.stdout.readline()  # the watch is streaming
        # The watch is held at the API server (and kubectl still runs).
        eventually(lambda: kube.standin.open_watches >= 1)
        assert process.poll() is None
        process.kill()
        process.communicate(timeout=10)
        # certgate lets go of it upstream too, not when the API server next sends.
        eventually(lambda: kube.standin.open_watches == 0)
        result = kube.kubectl(admin, "get", "pods", "-n", "prod", "--request-timeout=15s")
        assert result.returncode == 0, result.stderr
        assert "api" in result.stdout
        last = [s for s in kube.standin.seen("/namespaces/prod/pods") if s.status == 200][-1]
        assert last.headers["impersonate-user"] == ["kadmin"]


def test_a_second_kube_service_cannot_take_the_cluster_over(kube: KubeSetup, viewer: User) -> None:
    """A host with a kube join token announcing a cluster another kube service serves is
    refused: kubectl calls go on to the first. Before, its heartbeat took the cluster's
    entry, and users' kubectl traffic went to it."""
    service, port = kube.service, kube.service_port
    try:
        kube.start_kube_service(name="kube-evil")  # announces dev-cluster too
    finally:
        rogue, kube.service, kube.service_port = kube.service, service, port
    log = kube.cluster.workdir / "kube-evil.log"
    said = (
        'cluster dev-cluster not announced: access denied: kubernetes cluster "dev-cluster"'
        ' is served by kube service "kube-1"'
    )
    eventually(lambda: said in log.read_text())
    time.sleep(2)  # two of its beats more: the entry stays kube-1's, said once
    assert log.read_text().count(said) == 1
    entry = kube.cluster.cgctl("get", "kube_cluster/dev-cluster", "--format=json").stdout
    assert json.loads(entry)["spec"]["service"] == "kube-1"
    assert kube.kubectl(viewer, "get", "pods").returncode == 0
    assert rogue is not None
    rogue.terminate()
    rogue.wait(timeout=15)
