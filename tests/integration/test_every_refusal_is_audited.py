"""Refusals decided before a node sees anything are audited too: an admin can answer
"who tried root on which node" and "what did the locked user try"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.unix import ensure_user
from tests.support.wait import eventually

ROLE = """\
kind: role
metadata: {name: no-root}
spec:
  allow: {logins: [cgna], node_labels: {env: dev}}
  deny: {logins: [root]}
"""


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user("cgna")
    c = Cluster(tmp_path_factory.mktemp("refusals"), roles="auth,proxy,node", labels="env=dev")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLE)
    yield c
    c.stop()


def rejected(cluster: Cluster, user: str) -> list[dict[str, Any]]:
    out = cluster.cgctl(
        "audit", "ls", "--event=session.rejected", f"--user={user}", "--format=json"
    ).stdout
    events: list[dict[str, Any]] = json.loads(out)
    return events


def test_root_refused_by_the_proxy_precheck_is_audited(node_cluster: Cluster) -> None:
    mallory = node_cluster.add_user("mallory", roles="no-root")
    node_cluster.login(mallory)
    refused = node_cluster.cgsh(mallory, "ssh", "root@node-1", "true", check=False)
    assert refused.returncode == 3
    assert 'login "root"' in refused.stderr
    events = eventually(lambda: rejected(node_cluster, "mallory") or None)
    assert [(e["login"], e["node"], e["server"], e["kind"]) for e in events] == [
        ("root", "node-1", "proxy", "ssh")
    ]
    assert 'login "root"' in events[0]["reason"]
    assert events[0]["addr"].startswith("127.0.0.1")


def test_a_locked_users_ls_and_ssh_are_audited(node_cluster: Cluster) -> None:
    trent = node_cluster.add_user("trent", roles="no-root")
    node_cluster.login(trent)
    assert node_cluster.cgsh(trent, "ls").returncode == 0
    assert rejected(node_cluster, "trent") == []  # an allowed ls leaves no refusal
    node_cluster.cgctl("lock", "--user=trent", "--message=under review", "--ttl=1h")
    listing = eventually(
        lambda: (r := node_cluster.cgsh(trent, "ls", check=False)).returncode != 0 and r
    )
    assert "under review" in listing.stderr
    api_refusals = eventually(
        lambda: [e for e in rejected(node_cluster, "trent") if e["kind"] == "api"] or None
    )
    assert "under review" in api_refusals[0]["reason"]
    assert api_refusals[0]["server"] == "auth"
