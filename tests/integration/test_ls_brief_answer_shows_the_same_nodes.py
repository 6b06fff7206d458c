"""`cgsh ls` asks auth for its brief answer (only the columns it prints, see
auth/http_nodes.py); the user sees what the full answer would have shown: the same
nodes, columns, label filters, sorting and refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from certgate.client.cluster import connect_profile
from certgate.client.profile import load_profile
from certgate.client.ssh import list_node_rows
from certgate.errors import BadParameter
from tests.support.cluster import Cluster, User

ROLE = """\
kind: role
metadata: {name: brief-lister}
spec:
  allow: {logins: [ubuntu], node_labels: {team: brief}}
"""

# Created out of name order, some with a hostname, one the role does not reach.
NODES = """\
---
kind: node
metadata: {name: brief-c, labels: {team: brief, env: prod}}
spec: {sub_kind: openssh, addr: "10.9.0.3:22", hostname: c.example}
---
kind: node
metadata: {name: brief-a, labels: {team: brief, env: dev}}
spec: {sub_kind: openssh, addr: "10.9.0.1:22"}
---
kind: node
metadata: {name: brief-b, labels: {team: brief, env: dev, tier: web}}
spec: {sub_kind: openssh, addr: "10.9.0.2:22", hostname: b.example}
---
kind: node
metadata: {name: brief-hidden, labels: {team: other, env: dev}}
spec: {sub_kind: openssh, addr: "10.9.0.4:22"}
"""


@pytest.fixture(scope="module")
def lister(cluster: Cluster) -> User:
    cluster.cgctl("create", "-f", "-", input=ROLE)
    cluster.cgctl("create", "-f", "-", input=NODES)
    user = cluster.add_user("brief-lee", roles="brief-lister")
    cluster.login(user)
    return user


def _full_answer(user: User, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """`GET /my/nodes` in its full form, as auth sends it (labels in their stored order:
    `--format=json` prints keys sorted)."""
    monkeypatch.setenv("CERTGATE_HOME", str(user.home))
    api = connect_profile(load_profile())
    try:
        nodes: list[dict[str, Any]] = api.call("GET", "/my/nodes")
    finally:
        api.close()
    return nodes


def _table_from_full(
    nodes: list[dict[str, Any]], filters: tuple[str, ...], verbose: bool
) -> list[list[str]]:
    """The rows `cgsh ls` printed from the full answer before there was a brief one."""
    wanted = dict(f.split("=", 1) for f in filters)
    chosen = [
        n for n in nodes if all(n["metadata"]["labels"].get(k) == v for k, v in wanted.items())
    ]
    rows = []
    for n in sorted(chosen, key=lambda n: n["metadata"]["name"]):
        meta, spec = n["metadata"], n["spec"]
        labels = ",".join(f"{k}={v}" for k, v in meta["labels"].items())
        # A node without a hostname leaves that column blank: no word on its line.
        hostname = [spec["hostname"]] if verbose and spec.get("hostname") else []
        rows.append([meta["name"], *hostname, spec["addr"], labels])
    return rows


def _printed_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()[2:]]  # under the header and rule


@pytest.mark.parametrize("filters", [(), ("env=dev",), ("env=dev", "tier=web"), ("env=none",)])
def test_ls_prints_what_the_full_answer_holds(
    cluster: Cluster, lister: User, filters: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _full_answer(lister, monkeypatch)
    assert sorted(n["metadata"]["name"] for n in full) == ["brief-a", "brief-b", "brief-c"]
    printed = json.loads(cluster.cgsh(lister, "ls", "--format=json", *filters).stdout)
    expected = _table_from_full(full, filters, verbose=False)
    assert [n["metadata"]["name"] for n in printed] == [row[0] for row in expected]

    out = cluster.cgsh(lister, "ls", *filters).stdout
    assert out.splitlines()[0].split() == ["Node", "Address", "Labels"]
    assert _printed_rows(out) == expected

    wide = cluster.cgsh(lister, "ls", "-v", *filters).stdout
    assert wide.splitlines()[0].split() == ["Node", "ID", "Hostname", "Address", "Labels"]
    assert _printed_rows(wide) == _table_from_full(full, filters, verbose=True)


def test_brief_rows_name_the_nodes_and_their_hostnames(
    cluster: Cluster, lister: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTGATE_HOME", str(lister.home))
    rows = list_node_rows(load_profile(), {"env": "dev"})
    assert [(r.name, r.hostname, r.addr) for r in rows] == [
        ("brief-a", "", "10.9.0.1:22"),
        ("brief-b", "b.example", "10.9.0.2:22"),
    ]
    assert rows[1].labels == {"team": "brief", "env": "dev", "tier": "web"}


def test_an_unknown_answer_form_is_refused(
    cluster: Cluster, lister: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTGATE_HOME", str(lister.home))
    api = connect_profile(load_profile())
    try:
        with pytest.raises(BadParameter):
            api.call("GET", "/my/nodes", params={"form": "tiny"})
        brief = api.call("GET", "/my/nodes", params={"form": "brief"})  # the control
    finally:
        api.close()
    assert brief["columns"] == ["name", "hostname", "addr", "labels"]
    assert sorted(row[0] for row in brief["rows"]) == ["brief-a", "brief-b", "brief-c"]


def test_a_bad_label_filter_is_still_a_usage_error(cluster: Cluster, lister: User) -> None:
    refused = cluster.cgsh(lister, "ls", "env", check=False)
    assert refused.returncode == 2
    assert '"env": filter nodes with key=value' in refused.stderr


def test_ls_shows_a_changed_node_as_it_is_now(cluster: Cluster, lister: User) -> None:
    # Auth keeps each node's brief row per revision: a new revision is a new row.
    def address_of(name: str) -> str:
        rows = _printed_rows(cluster.cgsh(lister, "ls", "tier=moved").stdout)
        return next((row[1] for row in rows if row[0] == name), "")

    assert address_of("brief-d") == ""  # not there yet: the control
    moved = "kind: node\nmetadata: {name: brief-d, labels: {team: brief, tier: moved}}\n"
    cluster.cgctl(
        "create", "-f", "-", input=moved + "spec: {sub_kind: openssh, addr: '10.9.1.1:22'}"
    )
    assert address_of("brief-d") == "10.9.1.1:22"
    cluster.cgctl(
        "create",
        "--force",
        "-f",
        "-",
        input=moved + "spec: {sub_kind: openssh, addr: '10.9.1.2:22'}",
    )
    assert address_of("brief-d") == "10.9.1.2:22"
