"""The access matrix: rows, how access is held, explanations — and that it agrees with
the node's own check (CachedAccess.check_login) for every login, node and path."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.access.cached_access import CachedAccess
from certgate.access.kube import AUTHENTICATED_GROUP, check_resource_grant, impersonation
from certgate.access.kube_matrix import KubeAccessRow
from certgate.access.matrix import (
    AccessRow,
    MatrixInput,
    access_matrix,
    decode_key,
    encode_key,
    iter_access,
)
from certgate.api.access_request import AccessRequest
from certgate.api.identity import Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock
from certgate.api.node import Node
from certgate.api.role import Role
from certgate.api.user import User
from certgate.client.access import AccessEntry
from certgate.errors import AccessDenied, BadParameter
from tests.support.views import StubView

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


def role(
    name: str, allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None
) -> Role:
    return Role.model_validate(
        {"metadata": {"name": name}, "spec": {"allow": allow or {}, "deny": deny or {}}}
    )


def user(name: str, roles: list[str], logins: list[str] | None = None) -> User:
    return User.model_validate(
        {"metadata": {"name": name}, "spec": {"roles": roles, "traits": {"logins": logins or []}}}
    )


def node(name: str, **labels: str) -> Node:
    return Node.model_validate(
        {"metadata": {"name": name, "labels": labels}, "spec": {"addr": "127.0.0.1:3022"}}
    )


def lock(name: str, **target: str) -> Lock:
    return Lock.model_validate({"metadata": {"name": name}, "spec": {"target": target}})


def approved(
    rid: str,
    who: str,
    roles: list[str],
    nodes: tuple[str, ...] = (),
    hours: int = 2,
) -> AccessRequest:
    return AccessRequest.model_validate(
        {
            "metadata": {"name": rid},
            "spec": {
                "user": who,
                "roles": roles,
                "resources": [{"kind": "node", "name": n} for n in nodes],
                "state": "APPROVED",
                "created": NOW - timedelta(hours=1),
                "pending_expires": NOW,
                "access_expires": NOW + timedelta(hours=hours),
            },
        }
    )


DEV = role(
    "dev",
    allow={"logins": ["{{internal.logins}}", "ubuntu", "root"], "node_labels": {"env": "dev"}},
    deny={"logins": ["root"]},
)
PROD = role("prod", allow={"logins": ["ubuntu", "postgres"], "node_labels": {"env": "prod"}})
ROLES = {r.name: r for r in (DEV, PROD)}
NODES = [node("web-1", env="dev"), node("db-1", env="prod"), node("db-2", env="prod")]


def described(row: AccessRow) -> str:
    # As cgctl prints it, from the JSON the API answers.
    return AccessEntry.from_dict(row.to_dict()).describe_how()


def rows_by_key(rows: list[Any]) -> dict[tuple[str, str, str], AccessRow]:
    return {(r.user, r.node, r.login): r for r in rows if isinstance(r, AccessRow)}


def test_standing_rows_name_the_granting_role_and_its_labels() -> None:
    rows = rows_by_key(
        access_matrix(MatrixInput([user("alice", ["dev"], ["alice"])], ROLES, NODES, now=NOW))
    )
    row = rows[("alice", "web-1", "alice")]
    assert row.allowed and row.how == "standing"
    assert [(g.role, dict(g.node_labels)) for g in row.allowed_by] == [("dev", {"env": "dev"})]
    assert rows[("alice", "web-1", "ubuntu")].allowed
    # Nothing on prod nodes: no rows at all, not refusal rows.
    assert not [k for k in rows if k[1].startswith("db-")]


def test_a_denied_login_is_a_refusal_row_naming_the_deny_role() -> None:
    rows = rows_by_key(
        access_matrix(MatrixInput([user("alice", ["dev"], ["alice"])], ROLES, NODES, now=NOW))
    )
    row = rows[("alice", "web-1", "root")]
    assert not row.allowed and row.how == "denied"
    assert row.denied_by == ("dev",)
    assert 'login "root" is denied by role dev' in row.reason
    assert described(row) == "denied by dev"


def test_a_resource_request_grants_only_its_nodes_until_it_ends() -> None:
    request = approved("req-1", "bob", ["prod"], nodes=("db-1",))
    rows = rows_by_key(
        access_matrix(MatrixInput([user("bob", [], [])], ROLES, NODES, requests=[request], now=NOW))
    )
    row = rows[("bob", "db-1", "postgres")]
    assert row.allowed and row.how == "request" and row.request_id == "req-1"
    assert row.until == NOW + timedelta(hours=2)
    assert described(row) == "request req-1 until 2026-11-30T14:00:00Z"
    assert ("bob", "db-2", "postgres") not in rows


def test_an_ended_or_someone_elses_request_grants_nothing() -> None:
    ended = approved("req-1", "bob", ["prod"], hours=-1)
    others = approved("req-2", "carol", ["prod"])
    rows = access_matrix(
        MatrixInput([user("bob", [], [])], ROLES, NODES, requests=[ended, others], now=NOW)
    )
    assert rows == []


def test_locks_mark_rows_locked_by_the_lock() -> None:
    users = [user("carol", ["dev"], ["carol"]), user("alice", ["dev"], ["alice"])]
    locks = [lock("l-carol", user="carol"), lock("l-ubuntu", login="ubuntu")]
    rows = rows_by_key(access_matrix(MatrixInput(users, ROLES, NODES, locks=locks, now=NOW)))
    carol = rows[("carol", "web-1", "carol")]
    assert not carol.allowed and carol.how == "locked" and carol.lock == "l-carol"
    assert described(carol) == "locked by l-carol"
    assert rows[("alice", "web-1", "ubuntu")].lock == "l-ubuntu"
    assert rows[("alice", "web-1", "alice")].allowed


def test_to_dict_is_plain_json() -> None:
    import json

    rows = access_matrix(MatrixInput([user("alice", ["dev"], ["alice"])], ROLES, NODES, now=NOW))
    data = json.loads(json.dumps([r.to_dict() for r in rows]))
    assert {d["how"] for d in data} == {"standing", "denied"}


# The matrix agrees with the node ------------------------------------------------------

LOGINS = ["root", "ubuntu", "alice", "postgres"]
label_values = st.sampled_from(["dev", "prod", "*", "^d.*$"])
selectors = st.one_of(
    st.just({"*": "*"}),
    st.dictionaries(st.sampled_from(["env", "team"]), label_values, min_size=1, max_size=2),
    st.just({}),
)
sections = st.fixed_dictionaries(
    {
        "logins": st.lists(st.sampled_from([*LOGINS, "{{internal.logins}}"]), max_size=3),
        "node_labels": selectors,
    }
)
deny_sections = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"logins": st.lists(st.sampled_from(LOGINS), max_size=2), "node_labels": selectors}
    ),
)
roles_strategy = st.lists(
    st.builds(lambda a, d: (a, d), sections, deny_sections), min_size=1, max_size=3
)
nodes_strategy = st.lists(
    st.dictionaries(st.sampled_from(["env", "team"]), st.sampled_from(["dev", "prod", "db"])),
    min_size=1,
    max_size=3,
)
lock_targets = st.lists(
    st.sampled_from(
        [("user", "u"), ("role", "r0"), ("login", "root"), ("node", "n0"), ("access_request", "q")]
    ),
    max_size=2,
)


@settings(max_examples=150, deadline=None)
@given(
    roles_strategy,
    nodes_strategy,
    lock_targets,
    st.booleans(),
    st.lists(st.sampled_from(["n0", "n1", "n2"]), max_size=2),
)
def test_matrix_allows_exactly_what_the_node_allows(
    specs: list[tuple[dict[str, Any], dict[str, Any]]],
    node_labels: list[dict[str, str]],
    targets: list[tuple[str, str]],
    with_request: bool,
    request_nodes: list[str],
) -> None:
    roles = {f"r{i}": role(f"r{i}", a, d) for i, (a, d) in enumerate(specs)}
    standing = [name for name in roles if name != "r0"] or ["r0"]
    the_user = user("u", standing, ["alice"])
    nodes = [node(f"n{i}", **labels) for i, labels in enumerate(node_labels)]
    locks = [lock(f"l{i}", **{kind: name}) for i, (kind, name) in enumerate(targets)]
    requests = [approved("q", "u", ["r0"], nodes=tuple(request_nodes))] if with_request else []
    rows = rows_by_key(
        access_matrix(MatrixInput([the_user], roles, nodes, locks, requests, now=NOW))
    )
    view = StubView({"role": roles, "lock": {lk.name: lk for lk in locks}})
    access = CachedAccess(view, clock=FixedClock())  # type: ignore[arg-type]
    identities = [Identity(username="u", roles=tuple(standing), traits=the_user.spec.traits)]
    if with_request:
        held = tuple(dict.fromkeys([*standing, "r0"]))
        resources = tuple(f"node/{n}" for n in dict.fromkeys(request_nodes))
        identities.append(
            Identity(
                username="u",
                roles=held,
                traits=the_user.spec.traits,
                request_ids=("q",),
                resources=resources,
            )
        )
    for n in nodes:
        for login in LOGINS:
            node_allows = False
            for identity in identities:
                try:
                    access.check_login(identity, n.name, n.metadata.labels, login)
                    node_allows = True
                except AccessDenied:
                    pass
            row = rows.get(("u", n.name, login))
            assert (row is not None and row.allowed) == node_allows, (n, login, row)
    for row in rows.values():
        # Every row has a role that grants it; a denied row names a deny that refuses it.
        assert row.allowed_by
        if row.how == "denied":
            assert row.denied_by and "is denied by role" in row.reason
            assert any(f"role {name}" in row.reason for name in row.denied_by)


# Kubernetes clusters -----------------------------------------------------------------


def cluster(name: str, **labels: str) -> KubeCluster:
    return KubeCluster.model_validate(
        {"metadata": {"name": name, "labels": labels}, "spec": {"addr": "127.0.0.1:3027"}}
    )


KVIEW = role("kview", allow={"kubernetes_labels": {"env": "dev"}, "kubernetes_groups": ["viewers"]})
KDENY = role("kdeny", deny={"kubernetes_labels": {"tier": "secret"}})
KBARE = role("kbare", allow={"kubernetes_labels": {"*": "*"}})
KROLES = {r.name: r for r in (KVIEW, KDENY, KBARE, PROD)}
CLUSTERS = [
    cluster("dev-a", env="dev"),
    cluster("dev-s", env="dev", tier="secret"),
    cluster("prod"),
]


def kube_rows(data: MatrixInput) -> dict[tuple[str, str], KubeAccessRow]:
    return {
        (r.user, r.kube_cluster): r for r in access_matrix(data) if isinstance(r, KubeAccessRow)
    }


def test_kube_rows_give_groups_name_deny_rules_and_leave_out_unmatched_clusters() -> None:
    users = [user("kim", ["kview", "kdeny"]), user("bo", ["kbare"])]
    rows = kube_rows(MatrixInput(users, KROLES, [], now=NOW, kube_clusters=CLUSTERS))
    kim = rows[("kim", "dev-a")]
    assert kim.allowed and kim.how == "standing" and kim.kubernetes_groups == ("viewers",)
    assert [(g.role, dict(g.kubernetes_labels)) for g in kim.allowed_by] == [
        ("kview", {"env": "dev"})
    ]
    secret = rows[("kim", "dev-s")]
    assert not secret.allowed and secret.how == "denied" and secret.denied_by == ("kdeny",)
    assert "denied by role kdeny" in secret.reason
    assert ("kim", "prod") not in rows  # no role's kubernetes_labels match: no row
    bare = rows[("bo", "prod")]
    assert bare.how == "denied" and bare.denied_by == () and "no assigned groups" in bare.reason
    assert kim.to_dict()["kind"] == "kube_cluster"
    entry = AccessEntry.from_dict(kim.to_dict())
    assert (entry.kind, entry.name, entry.describe_as()) == (
        "kube_cluster",
        "dev-a",
        "groups viewers",
    )


def test_kube_rows_locked_and_granted_by_a_request_for_the_cluster() -> None:
    request = AccessRequest.model_validate(
        {
            **approved("req-k", "bo", ["kview"]).model_dump(),
            "spec": {
                **approved("req-k", "bo", ["kview"]).spec.model_dump(),
                "resources": [{"kind": "kube_cluster", "name": "dev-a"}],
            },
        }
    )
    users = [user("bo", ["kbare"]), user("kim", ["kview"])]
    locks = [lock("l-kim", user="kim")]
    rows = kube_rows(
        MatrixInput(users, KROLES, [], locks, [request], now=NOW, kube_clusters=CLUSTERS)
    )
    bo = rows[("bo", "dev-a")]
    assert bo.allowed and bo.how == "request" and bo.request_id == "req-k"
    assert bo.kubernetes_groups == ("viewers",)
    assert rows[("bo", "dev-s")].how == "denied"  # the request names dev-a only
    kim = rows[("kim", "dev-a")]
    assert kim.how == "locked" and kim.lock == "l-kim" and "locked" in kim.reason


kube_sections = st.fixed_dictionaries(
    {
        "kubernetes_labels": selectors,
        "kubernetes_groups": st.lists(
            st.sampled_from(["g1", "g2", "{{internal.logins}}"]), max_size=2
        ),
        "kubernetes_users": st.lists(st.sampled_from(["u1", "u2"]), max_size=2),
    }
)
kube_denies = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {
            "kubernetes_labels": st.one_of(st.just({}), selectors),
            "kubernetes_groups": st.lists(st.sampled_from(["g1", "alice"]), max_size=1),
        }
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.builds(lambda a, d: (a, d), kube_sections, kube_denies), min_size=1, max_size=3),
    nodes_strategy,
    lock_targets,
)
def test_kube_rows_allow_exactly_what_the_kube_service_allows(
    specs: list[tuple[dict[str, Any], dict[str, Any]]],
    cluster_labels: list[dict[str, str]],
    targets: list[tuple[str, str]],
) -> None:
    roles = {f"r{i}": role(f"r{i}", a, d) for i, (a, d) in enumerate(specs)}
    the_user = user("u", list(roles), ["alice"])
    clusters = [cluster(f"n{i}", **labels) for i, labels in enumerate(cluster_labels)]
    locks = [lock(f"l{i}", **{kind: name}) for i, (kind, name) in enumerate(targets)]
    rows = kube_rows(MatrixInput([the_user], roles, [], locks, now=NOW, kube_clusters=clusters))
    view = StubView({"role": roles, "lock": {lk.name: lk for lk in locks}})
    access = CachedAccess(view, clock=FixedClock())  # type: ignore[arg-type]
    identity = Identity(username="u", roles=tuple(roles), traits=the_user.spec.traits)
    for c in clusters:
        # What kube/forwarder.py runs before a resource call.
        try:
            access.check_identity(identity, node=c.name)
            check_resource_grant(identity, c.name)
            role_set = access.role_set(identity)
            if len(role_set.kubernetes_users(c.metadata.labels)) > 1:
                as_user = role_set.kubernetes_users(c.metadata.labels)[0]
            else:
                as_user = ""
            imp = impersonation(role_set, "u", c.name, c.metadata.labels, as_user)
            service_allows = True
        except AccessDenied:
            service_allows, imp = False, None
        row = rows.get(("u", c.name))
        assert (row is not None and row.allowed) == service_allows, (c, row)
        if row is not None and imp is not None and not as_user:
            assert (*row.kubernetes_groups, AUTHENTICATED_GROUP) == imp.groups
        if row is not None and row.how == "denied":
            assert row.reason.startswith('access denied to kubernetes cluster "')


# Paging ---------------------------------------------------------------------------------


def test_pages_that_start_after_a_key_add_up_to_the_whole_matrix() -> None:
    users = [user(f"u{i}", ["dev", "kview"], [f"u{i}"]) for i in range(4)]
    nodes = [node(f"n{i:02}", env="dev") for i in range(6)]
    data = MatrixInput(users, KROLES | ROLES, nodes, now=NOW, kube_clusters=CLUSTERS)
    whole = [r.key for r in access_matrix(data)]
    assert len(whole) > 20 and whole == sorted(whole)
    paged: list[Any] = []
    after = None
    while True:
        page = list(itertools.islice(iter_access(data, after), 7))
        paged += [r.key for r in page]
        if len(page) < 7:
            break
        after = decode_key(encode_key(page[-1].key))
    assert paged == whole
    with pytest.raises(BadParameter):
        decode_key("not-a-key")
