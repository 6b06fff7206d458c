"""`cgctl create` of several documents creates all of them or none, whatever the reason
for refusing one; bad YAML is one line, never a traceback."""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import Cluster

ONE = """\
kind: role
version: v1
metadata: {name: batch-one}
---
kind: role
version: v1
metadata: {name: batch-two}
"""


def role_names(cluster: Cluster) -> set[str]:
    out = cluster.cgctl("get", "role", "--format=json").stdout
    return {r["metadata"]["name"] for r in json.loads(out)}


@pytest.mark.parametrize(
    ("later", "reason"),
    [
        ("kind: role\nversion: v1\nmetadata: {name: batch-existing}\n", "already exists"),
        (
            "kind: user\nversion: v1\nmetadata: {name: batch-user}\nspec: {roles: [no-such]}\n",
            "not found",
        ),
        ("kind: role\nversion: v1\nmetadata: {name: batch-one}\n", "appears twice"),
    ],
    ids=["existing-role", "unknown-role", "same-name-twice"],
)
def test_a_refused_document_leaves_the_earlier_ones_uncreated(
    cluster: Cluster, later: str, reason: str
) -> None:
    if "batch-existing" not in role_names(cluster):
        cluster.cgctl("create", "-f", "-", input=ONE.replace("batch-one", "batch-existing"))
        cluster.cgctl("rm", "role/batch-two")
    result = cluster.cgctl("create", "-f", "-", input=ONE + "---\n" + later, check=False)
    assert result.returncode != 0
    assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not {"batch-one", "batch-two"} & role_names(cluster)
    users = json.loads(cluster.cgctl("get", "user", "--format=json").stdout)
    assert "batch-user" not in [u["metadata"]["name"] for u in users]


def test_a_user_may_name_a_role_created_beside_it(cluster: Cluster) -> None:
    user = "kind: user\nversion: v1\nmetadata: {name: batch-bob}\nspec: {roles: [batch-new]}\n"
    role = "kind: role\nversion: v1\nmetadata: {name: batch-new}\n"
    out = cluster.cgctl("create", "-f", "-", input=user + "---\n" + role).stdout
    assert 'user "batch-bob" has been created' in out
    assert "batch-new" in role_names(cluster)


@pytest.mark.parametrize(
    "text",
    [
        "kind: !!int x\n",
        "kind: role\nmetadata: {name: r}\nspec: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "kind: role\nmetadata: {name: " + "9" * 5_000 + "}\n",
        "kind: lock\nversion: v1\nmetadata: {name: l, expires: 9999-12-31T23:59:59-23:59}\n"
        "spec: {target: {user: bob}}\n",
        "kind: role\nversion: v1\nmetadata: {name: r}\nspec: {options: {max_session_ttl: 9"
        + "9" * 40
        + "d}}\n",
    ],
    ids=["tagged-int", "deep-list", "long-number", "year-10000", "huge-duration"],
)
def test_bad_yaml_is_one_line(cluster: Cluster, text: str) -> None:
    result = cluster.cgctl("create", "-f", "-", input=text, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
