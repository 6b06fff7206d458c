"""`cgctl access ls` says who may reach which node as whom, and `cgsh ssh` agrees; it
says who may reach which Kubernetes cluster as which groups, and real kubectl agrees.

Three users: dana (a deny rule on one login), rex (no standing access, an approved
resource request for one node), lou (locked). Every row of the matrix, and every absent
combination of user, node and login, is tried with a real `cgsh ssh LOGIN@NODE true`.
For the cluster (a kube service in front of the API-server stand-in): kira (groups,
standing), ned (a deny rule on the cluster's labels), pia (a role for other labels: no
row), lev (locked), each tried with `kubectl get pods`. A user whose roles do not allow
listing the access map is refused it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import BIN, Cluster, User, run
from tests.support.kube_cluster import KubeSetup
from tests.support.kube_standin import Grant, KubeStandin
from tests.support.unix import ensure_user
from tests.support.wait import eventually

ALLOWED, DENIED = "cgam", "cgax"
ROLES = f"""\
kind: role
metadata: {{name: am-dev}}
spec:
  allow: {{logins: [{ALLOWED}, {DENIED}], node_labels: {{env: dev}}}}
  deny: {{logins: [{DENIED}]}}
---
kind: role
metadata: {{name: am-requester}}
spec:
  allow:
    request: {{search_as_roles: [am-prod]}}
---
kind: role
metadata: {{name: am-prod}}
spec:
  allow: {{logins: [{ALLOWED}], node_labels: {{"*": "*"}}}}
"""
USERS = ("dana", "rex", "lou")
NODES = ("node-1", "node-2")
LOGINS = (ALLOWED, DENIED)


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for login in LOGINS:
        ensure_user(login)
    cluster = Cluster(
        tmp_path_factory.mktemp("accessmap"), roles="auth,proxy,node", labels="env=dev"
    )
    cluster.start()
    cluster.start_node("node-2", "env=prod")
    cluster.cgctl("create", "-f", "-", input=ROLES)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def people(c: Cluster) -> dict[str, User]:
    dana = c.add_user("dana", roles="am-dev")
    rex = c.add_user("rex", roles="am-requester")
    lou = c.add_user("lou", roles="am-dev")
    for user in (dana, rex, lou):
        c.login(user)
    eventually(lambda: "node-2" in c.cgctl("nodes", "ls").stdout)
    request_id = c.cgsh(
        rex, "request", "create", "--resource=node/node-2", "--reason=db work", "--nowait"
    ).stdout.strip()
    c.cgctl("requests", "approve", request_id)
    c.login(rex, f"--request-id={request_id}")
    # Before the lock, lou gets in: the lock below is what refuses lou afterwards.
    assert ssh(c, lou, ALLOWED, "node-1").returncode == 0
    c.cgctl("lock", "--user=lou", "--message=under review")
    eventually(lambda: ssh(c, lou, ALLOWED, "node-1").returncode != 0)
    return {"dana": dana, "rex": rex, "lou": lou}


def ssh(c: Cluster, user: User, login: str, node: str) -> subprocess.CompletedProcess[str]:
    return c.cgsh(user, "ssh", f"{login}@{node}", "true", check=False)


def access_rows(c: Cluster, *args: str) -> list[dict[str, Any]]:
    rows = json.loads(c.cgctl("access", "ls", "--format=json", *args).stdout)
    assert isinstance(rows, list)
    return [r for r in rows if r["user"] in USERS and r["kind"] == "node"]


def test_every_row_and_every_absent_combination_agrees_with_cgsh_ssh(
    c: Cluster, people: dict[str, User]
) -> None:
    rows = {(r["user"], r["node"], r["login"]): r for r in access_rows(c)}
    # What the matrix says, in short, before trying it.
    summary = {key: row["how"] for key, row in rows.items()}
    request_id = rows[("rex", "node-2", ALLOWED)]["request_id"]
    assert summary == {
        ("dana", "node-1", ALLOWED): "standing",
        ("dana", "node-1", DENIED): "denied",
        ("rex", "node-2", ALLOWED): "request",
        ("lou", "node-1", ALLOWED): "locked",
        ("lou", "node-1", DENIED): "denied",
    }
    assert rows[("dana", "node-1", DENIED)]["denied_by"] == ["am-dev"]
    assert rows[("dana", "node-1", ALLOWED)]["allowed_by"] == [
        {"role": "am-dev", "node_labels": {"env": "dev"}}
    ]
    assert request_id and rows[("rex", "node-2", ALLOWED)]["until"]
    assert rows[("lou", "node-1", ALLOWED)]["lock"]
    assert rows[("lou", "node-1", DENIED)]["lock"] and not rows[("dana", "node-1", DENIED)]["lock"]

    for user in USERS:
        for node in NODES:
            for login in LOGINS:
                row = rows.get((user, node, login))
                result = ssh(c, people[user], login, node)
                expected = row is not None and row["allowed"]
                assert (result.returncode == 0) == expected, (user, node, login, row, result.stderr)
                if row is not None and not row["allowed"]:
                    # The refusal is the one the matrix explains (a lock is checked first).
                    why = "under review" if row["lock"] else row["reason"].split(": ")[-1]
                    assert why in result.stderr, (row, result.stderr)


def test_filters_text_and_csv(c: Cluster, people: dict[str, User]) -> None:
    assert {r["user"] for r in access_rows(c, "--user=dana")} == {"dana"}
    assert {r["node"] for r in access_rows(c, "--node=node-2")} == {"node-2"}
    assert {r["user"] for r in access_rows(c, "--role=am-prod")} == {"rex"}
    assert {r["node"] for r in access_rows(c, "--label=env=prod")} == {"node-2"}

    text = c.cgctl("access", "ls", "--user=rex").stdout
    assert "request " in text and " until " in text
    locked = c.cgctl("access", "ls", "--user=lou").stdout
    assert "locked by " in locked

    # A mistyped name is said to be one, not answered with an empty table ("no access").
    for flag, said in (
        ("--user=dnaa", 'user "dnaa" not found'),
        ("--role=am-prd", 'role "am-prd" not found'),
        ("--node=node-9", 'node "node-9" not found'),
        ("--kube-cluster=nowhere", 'kubernetes cluster "nowhere" not found'),
    ):
        typo = c.cgctl("access", "ls", flag, check=False)
        assert typo.returncode != 0 and said in typo.stderr, (flag, typo.stderr)
        assert typo.stdout == "", typo.stdout

    bad = c.cgctl("access", "ls", "--label=env", check=False)
    assert bad.returncode != 0 and "must be KEY=VALUE" in bad.stderr, bad.stderr
    too_far = c.cgctl("activity", "--days=1000", check=False)
    assert too_far.returncode != 0 and "days must be" in too_far.stderr, too_far.stderr

    out = c.cgctl("access", "ls", "--format=csv").stdout
    parsed = list(csv.DictReader(io.StringIO(out)))
    mine = {(r["user"], r["node"], r["login"]): r for r in parsed if r["user"] in USERS}
    assert mine[("dana", "node-1", DENIED)]["how"] == "denied"
    assert mine[("dana", "node-1", DENIED)]["allowed"] == "false"
    assert mine[("rex", "node-2", ALLOWED)]["until"]


def test_activity_counts_todays_sessions_and_refusals(c: Cluster, people: dict[str, User]) -> None:
    def today() -> dict[str, int]:
        data = json.loads(c.cgctl("activity", "--days=3", "--format=json").stdout)
        assert len(data["days"]) == 3
        return {kind: values[-1] for kind, values in data["series"].items()}

    before = today()
    assert before["logins"] >= 3 and before["sessions"] >= 1
    dana = people["dana"]
    assert ssh(c, dana, ALLOWED, "node-1").returncode == 0
    # Stock OpenSSH reaches the node, which refuses (and audits) the denied login; cgsh
    # would have refused it before dialling.
    config = dana.home / "openssh_config"
    config.write_text(c.cgsh(dana, "config").stdout)
    refused = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", f"{DENIED}@node-1", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 255
    assert c.login(dana, check=False, otp="000000").returncode != 0
    eventually(lambda: (now := today())["sessions"] > before["sessions"] and now)
    eventually(lambda: today()["session_refusals"] > before["session_refusals"])
    eventually(lambda: today()["login_refusals"] > before["login_refusals"])
    assert "Session Refusals" in c.cgctl("activity").stdout


def test_only_roles_that_allow_it_may_list_the_access_map(
    c: Cluster, people: dict[str, User]
) -> None:
    def remote(user: User) -> subprocess.CompletedProcess[str]:
        env = {"CERTGATE_HOME": str(user.home), "CERTGATE_DATA_DIR": ""}
        return run([str(BIN / "cgctl"), "access", "ls", "--format=json"], env=env, check=False)

    auditor = c.add_user("am-auditor", roles="auditor")
    c.login(auditor)
    seen = remote(auditor)
    assert seen.returncode == 0, seen.stderr
    assert any(r["user"] == "dana" for r in json.loads(seen.stdout))

    refused = remote(people["dana"])
    assert refused.returncode == 3
    assert (
        refused.stderr.strip() == 'error: access denied: your roles do not allow "list" on "access"'
    )
    activity = run(
        [str(BIN / "cgctl"), "activity"],
        env={"CERTGATE_HOME": str(people["dana"].home), "CERTGATE_DATA_DIR": ""},
        check=False,
    )
    assert activity.returncode == 3


# Kubernetes clusters -------------------------------------------------------------------

KUBE_ROLES = """\
kind: role
metadata: {name: ak-view}
spec:
  allow: {kubernetes_labels: {env: dev}, kubernetes_groups: [ak-viewers]}
---
kind: role
metadata: {name: ak-deny}
spec:
  allow: {kubernetes_labels: {"*": "*"}, kubernetes_groups: [ak-viewers]}
  deny: {kubernetes_labels: {env: dev}}
---
kind: role
metadata: {name: ak-prod}
spec:
  allow: {kubernetes_labels: {env: prod}, kubernetes_groups: [ak-viewers]}
"""
KUBE_USERS = {"kira": "ak-view", "ned": "ak-deny", "pia": "ak-prod", "lev": "ak-view"}
CLUSTER = "ak-cluster"


@pytest.fixture(scope="module")
def kube(c: Cluster) -> Iterator[KubeSetup]:
    standin = KubeStandin(c.workdir)
    standin.grants.append(Grant(("group:ak-viewers",), verbs=("get", "list", "watch")))
    standin.start()
    setup = KubeSetup(c, standin, c.kube_proxy_port)
    try:
        setup.start_kube_service("ak-kube", labels="env=dev", cluster_name=CLUSTER)
        c.cgctl("create", "-f", "-", input=KUBE_ROLES)
        yield setup
    finally:
        standin.stop()


@pytest.fixture(scope="module")
def kube_people(kube: KubeSetup) -> dict[str, User]:
    c = kube.cluster
    people = {name: c.add_user(name, roles=role) for name, role in KUBE_USERS.items()}
    for user in people.values():
        c.login(user)
    eventually(lambda: CLUSTER in c.cgsh(people["kira"], "kube", "ls").stdout)
    for name in ("kira", "lev"):
        assert kube.kube_login(people[name], CLUSTER).returncode == 0
    # ned and pia cannot `cgsh kube login` (the cluster is not theirs to list): they get
    # kira's kubeconfig entry, pointed at their own certgate login.
    kira = people["kira"]
    for name in ("ned", "pia"):
        text = kube.kubeconfig(kira).read_text().replace(str(kira.home), str(people[name].home))
        kube.kubeconfig(people[name]).write_text(text)
    # Before the lock, lev gets in: the lock below is what refuses lev afterwards.
    assert kubectl_get(kube, people["lev"]).returncode == 0
    c.cgctl("lock", "--user=lev", "--message=kube audit")
    eventually(lambda: kubectl_get(kube, people["lev"]).returncode != 0)
    return people


def kubectl_get(kube: KubeSetup, user: User) -> subprocess.CompletedProcess[str]:
    return kube.kubectl(user, "get", "pods", "-n", "default")


def test_kube_rows_agree_with_what_kubectl_is_allowed(
    kube: KubeSetup, kube_people: dict[str, User]
) -> None:
    c = kube.cluster
    every = json.loads(c.cgctl("access", "ls", "--format=json").stdout)
    rows = {r["user"]: r for r in every if r["kind"] == "kube_cluster" and r["user"] in KUBE_USERS}
    assert {user: row["how"] for user, row in rows.items()} == {
        "kira": "standing",
        "ned": "denied",
        "lev": "locked",
    }
    assert rows["kira"]["kubernetes_groups"] == ["ak-viewers"]
    assert rows["kira"]["allowed_by"] == [{"role": "ak-view", "kubernetes_labels": {"env": "dev"}}]
    assert rows["ned"]["denied_by"] == ["ak-deny"] and rows["ned"]["kubernetes_groups"] == []
    assert rows["lev"]["lock"] and rows["lev"]["kubernetes_groups"] == ["ak-viewers"]

    for name, user in kube_people.items():
        row = rows.get(name)
        result = kubectl_get(kube, user)
        expected = row is not None and row["allowed"]
        assert (result.returncode == 0) == expected, (name, row, result.stderr)
        if row is not None and not row["allowed"]:
            why = "kube audit" if row["lock"] else row["reason"].split(": ")[-1]
            assert why in result.stderr, (row, result.stderr)

    # The filters: one cluster, or nodes only, or clusters only.
    only = json.loads(c.cgctl("access", "ls", f"--kube-cluster={CLUSTER}", "--format=json").stdout)
    assert only and {(r["kind"], r["kube_cluster"]) for r in only} == {("kube_cluster", CLUSTER)}
    clusters = json.loads(c.cgctl("access", "ls", "--kind=kube_cluster", "--format=json").stdout)
    assert clusters and {r["kind"] for r in clusters} == {"kube_cluster"}
    nodes = json.loads(c.cgctl("access", "ls", "--kind=node", "--format=json").stdout)
    assert all(r["kind"] == "node" for r in nodes)
    text = c.cgctl("access", "ls", "--user=kira").stdout
    assert "kube_cluster" in text and "groups ak-viewers" in text
    parsed = list(csv.DictReader(io.StringIO(c.cgctl("access", "ls", "--format=csv").stdout)))
    ned = next(r for r in parsed if r["user"] == "ned")
    assert (ned["kind"], ned["kube_cluster"], ned["how"], ned["node"]) == (
        "kube_cluster",
        CLUSTER,
        "denied",
        "",
    )
