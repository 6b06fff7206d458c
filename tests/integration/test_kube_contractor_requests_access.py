"""Demo: a contractor refused by Kubernetes requests a role, an admin approves, and the
next kubectl call works without touching the kubeconfig; a lock refuses it at once. A
resource request for one cluster reaches that cluster and no other.

Real certgate processes (auth + proxy, two kube services in front of the API-server
stand-in, as clusters dev-cluster and staging-cluster), real kubectl 1.37 and cgsh.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import BIN, Cluster, User
from tests.support.kube_cluster import KubeSetup
from tests.support.kube_standin import Grant, KubeStandin
from tests.support.wait import eventually

ROLES = """
kind: role
metadata: {name: kube-contractor}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    request:
      roles: [kube-member]
      search_as_roles: [kube-search]
---
kind: role
metadata: {name: kube-member}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
---
kind: role
metadata: {name: kube-search}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
"""

STAGING = "staging-cluster"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeSetup]:
    workdir = tmp_path_factory.mktemp("kube-requests")
    standin = KubeStandin(workdir)
    standin.grants += [Grant(("group:system:masters",))]
    standin.start()
    cluster = Cluster(workdir)
    cluster.start()
    setup = KubeSetup(cluster, standin, cluster.kube_proxy_port)
    try:
        setup.start_kube_service()
        setup.start_kube_service("kube-2", labels="env=staging", cluster_name=STAGING)
        cluster.cgctl("create", "-f", "-", input=ROLES)
        yield setup
    finally:
        cluster.stop()
        standin.stop()


def _contractor(kube: KubeSetup, name: str) -> User:
    """A user whose standing role reaches both clusters with no groups: refused there."""
    user = kube.cluster.add_user(name, roles="kube-contractor")
    kube.cluster.login(user)
    eventually(lambda: STAGING in kube.cluster.cgsh(user, "kube", "ls").stdout)
    for cluster in (STAGING, "dev-cluster"):  # dev-cluster last: the current context
        result = kube.kube_login(user, cluster)
        assert result.returncode == 0, result.stderr
    return user


def _background(kube: KubeSetup, user: User, *args: str) -> subprocess.Popen[str]:
    """`cgsh request create` left waiting for its review."""
    return subprocess.Popen(
        [str(BIN / "cgsh"), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "CERTGATE_HOME": str(user.home)},
    )  # fmt: skip


def _pending(kube: KubeSetup, user: str) -> list[dict[str, Any]]:
    found = json.loads(kube.cluster.cgctl("requests", "ls", "--format=json").stdout)
    return [r for r in found if r["spec"]["user"] == user and r["spec"]["state"] == "PENDING"]


def test_contractor_requests_kube_access_and_a_lock_takes_it_away(kube: KubeSetup) -> None:
    contractor = _contractor(kube, "contractor")
    assert "Kubernetes groups:  -\n" in kube.cluster.cgsh(contractor, "status").stdout
    config_before = kube.kubeconfig(contractor).read_text()
    refused = kube.kubectl(contractor, "get", "nodes")
    assert refused.returncode != 0
    assert 'user "contractor" has no assigned groups or users' in refused.stderr

    waiting = _background(
        kube, contractor, "request", "create", "--roles=kube-member", "--reason=debug prod"
    )
    [pending] = eventually(lambda: _pending(kube, "contractor"))
    assert waiting.poll() is None  # still waiting for a review
    kube.cluster.cgctl("requests", "approve", pending["metadata"]["name"], "--reason=ok")
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert "Approved" in out
    # As in the talk: "I've been assigned the Kubernetes group system:masters".
    assert (
        "Roles: kube-contractor, kube-member; logins: -\nKubernetes groups: system:masters\n" in out
    )
    assert "Kubernetes groups:  system:masters\n" in kube.cluster.cgsh(contractor, "status").stdout

    # The next kubectl call presents the fresh certificate (the exec plugin reads it).
    granted = kube.kubectl(contractor, "get", "nodes")
    assert granted.returncode == 0, granted.stderr
    assert "kube-node-1" in granted.stdout
    assert kube.kubeconfig(contractor).read_text() == config_before
    seen = [s for s in kube.standin.seen("/api/v1/nodes") if s.headers.get("impersonate-user")]
    assert seen[-1].headers["impersonate-user"] == ["contractor"]
    assert "system:masters" in seen[-1].headers["impersonate-group"]

    # A lock refuses the next call at once, though the certificate is still valid.
    kube.cluster.cgctl("lock", "--user=contractor", "--message=contract ended")
    locked = eventually(
        lambda: (r := kube.kubectl(contractor, "get", "nodes")).returncode != 0 and r, timeout=10
    )
    assert "contract ended" in locked.stderr
    assert "kube-node-1" not in locked.stdout
    # cgsh status cannot look the grant up any more, and says why.
    status = kube.cgsh(contractor, "status").stdout
    assert f"Access request:     {pending['metadata']['name']} (not checked: " in status
    assert "locked: contract ended)" in status


def test_a_kube_cluster_resource_request_grants_that_cluster_only(kube: KubeSetup) -> None:
    rita = _contractor(kube, "kube-rita")
    found = kube.cluster.cgsh(rita, "request", "search", "--kind=kube_cluster").stdout
    assert "dev-cluster" in found and STAGING in found
    assert "cgsh request create --resource=kube_cluster/" in found
    staged = kube.cluster.cgsh(rita, "request", "search", "--kind=kube_cluster", "env=staging")
    assert STAGING in staged.stdout and "dev-cluster" not in staged.stdout
    missing = kube.cluster.cgsh(
        rita, "request", "create", "--resource=kube_cluster/nowhere", "--nowait", check=False
    )
    assert missing.returncode != 0
    assert 'kubernetes cluster "nowhere" not found' in missing.stderr

    request_id = kube.cluster.cgsh(
        rita, "request", "create", "--resource=kube_cluster/dev-cluster", "--reason=one",
        "--nowait",
    ).stdout.strip()  # fmt: skip
    shown = kube.cluster.cgsh(rita, "request", "show", request_id).stdout
    assert "kube-search" in shown and "kube_cluster/dev-cluster" in shown
    kube.cluster.cgctl("requests", "approve", request_id)
    kube.cluster.login(rita, f"--request-id={request_id}")

    mine = kube.kubectl(rita, "get", "nodes")
    assert mine.returncode == 0, mine.stderr
    assert "kube-node-1" in mine.stdout
    # The search role reaches staging too; the grant is limited to dev-cluster.
    staging = f"--context={kube.cluster.cluster_name}-{STAGING}"
    other = kube.kubectl(rita, staging, "get", "nodes")
    assert other.returncode != 0 and "kube-node-1" not in other.stdout
    # Discovery is refused too, so kubectl cannot show why; a raw call shows the rule.
    raw = kube.kubectl(rita, staging, "get", "--raw", "/api/v1/nodes")
    assert raw.returncode != 0 and "kube-node-1" not in raw.stdout
    assert "your access request grants only kube_cluster/dev-cluster" in raw.stderr
    listed = kube.cluster.cgsh(rita, "kube", "ls").stdout
    assert "dev-cluster" in listed and STAGING not in listed


def test_a_kube_service_tracks_sessions_of_its_own_clusters_only(kube: KubeSetup) -> None:
    """The kube service of dev-cluster posing as the one of staging-cluster."""
    kube.cluster.add_user("kube-tracked", roles="kube-contractor")
    identity = IdentityFiles.load(kube.cluster.workdir / "kube-1" / "identity" / "kube")

    def tracker(session_id: str, cluster: str) -> dict[str, Any]:
        return {
            "kind": "session_tracker", "version": "v1",
            "metadata": {"name": session_id},
            "spec": {
                "kind": "k8s", "session_kind": "exec", "user": "kube-tracked",
                "login": "kube-tracked", "node": cluster, "roles": ["kube-contractor"],
                "started": "2026-01-01T00:00:00+00:00",
            },
        }  # fmt: skip

    with httpx.Client(
        base_url=f"https://{kube.cluster.auth_addr}", verify=identity.tls_context(), timeout=10
    ) as auth:
        own = tracker("55555555-5555-4555-8555-555555555555", "dev-cluster")
        assert auth.post("/v1/sessions", json={"put": [own]}).status_code == 204
        other = tracker("66666666-6666-4666-8666-666666666666", STAGING)
        answer = auth.post("/v1/sessions", json={"put": [other]})
        assert answer.status_code == 403
        assert f'may not track sessions of node "{STAGING}"' in answer.json()["message"]
        assert (
            auth.post("/v1/sessions", json={"delete": [own["metadata"]["name"]]}).status_code == 204
        )
