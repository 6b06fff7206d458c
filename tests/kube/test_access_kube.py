"""access/kube.py: who a user is in a cluster and what they may touch (no I/O)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.access.kube import (
    AUTHENTICATED_GROUP,
    check_path,
    impersonation,
    parse_request,
    resource_rules,
)
from certgate.access.rbac import RoleSet
from certgate.api.meta import Metadata
from certgate.api.role import KubeResource, Role, RoleConditions, RoleSpec
from certgate.errors import AccessDenied, BadParameter
from certgate.kube.filtering import json_only

DEV = {"env": "dev"}


def role(name: str, allow: RoleConditions, deny: RoleConditions | None = None) -> Role:
    return Role(
        metadata=Metadata(name=name),
        spec=RoleSpec(allow=allow, deny=deny or RoleConditions()),
    )


def roles(*items: Role, traits: dict[str, list[str]] | None = None) -> RoleSet:
    return RoleSet(list(items), traits or {})


VIEWER = role(
    "viewer",
    RoleConditions(kubernetes_labels={"env": "dev"}, kubernetes_groups=["viewers", "editors"]),
)


def test_parse_request_names_kind_namespace_name_and_verb() -> None:
    exec_ = parse_request("GET", "/api/v1/namespaces/dev/pods/web/exec?command=sh&tty=true")
    assert (exec_.kind, exec_.namespace, exec_.name, exec_.verb) == ("pod", "dev", "web", "exec")
    assert exec_.is_session and exec_.first("tty") == "true"
    assert parse_request("GET", "/api/v1/pods?watch=true").verb == "watch"
    assert parse_request("GET", "/api/v1/namespaces/dev/pods").verb == "list"
    deploy = parse_request("PATCH", "/apis/apps/v1/namespaces/dev/deployments/api")
    assert (deploy.kind, deploy.verb) == ("deployment", "patch")
    assert parse_request("GET", "/api/v1/namespaces/dev").kind == "namespace"
    assert parse_request("GET", "/apis").kind == ""
    forward = parse_request("POST", "/api/v1/namespaces/dev/pods/web/portforward")
    assert forward.verb == "portforward"


def test_no_groups_and_no_users_is_refused_with_the_contract_message() -> None:
    contractor = roles(role("c", RoleConditions(kubernetes_labels={"*": "*"})))
    with pytest.raises(AccessDenied, match='user "contractor" has no assigned groups or users'):
        impersonation(contractor, "contractor", "dev-cluster", DEV)
    # Discovery goes through as the bare authenticated user: it grants nothing.
    bare = impersonation(contractor, "contractor", "dev-cluster", DEV, discovery=True)
    assert bare.groups == (AUTHENTICATED_GROUP,)


def test_groups_come_from_roles_whose_labels_match_less_denied_ones() -> None:
    prod_admin = role(
        "prod", RoleConditions(kubernetes_labels={"env": "prod"}, kubernetes_groups=["admins"])
    )
    no_editors = role("no-edit", RoleConditions(), RoleConditions(kubernetes_groups=["editors"]))
    found = impersonation(roles(VIEWER, prod_admin, no_editors), "ann", "c", DEV)
    assert found.user == "ann"
    assert found.groups == ("viewers", AUTHENTICATED_GROUP)


def test_templates_expand_from_traits() -> None:
    templated = role(
        "t",
        RoleConditions(
            kubernetes_labels={"*": "*"},
            kubernetes_groups=["{{internal.kubernetes_groups}}"],
            kubernetes_users=["{{internal.kubernetes_users}}"],
        ),
    )
    found = impersonation(
        roles(templated, traits={"kubernetes_groups": ["g1"], "kubernetes_users": ["u1"]}),
        "ann",
        "c",
        DEV,
    )
    assert (found.user, found.groups) == ("u1", ("g1", AUTHENTICATED_GROUP))


def test_as_and_as_group_only_narrow() -> None:
    narrowed = impersonation(roles(VIEWER), "ann", "c", DEV, as_groups=["viewers"])
    assert narrowed.groups == ("viewers", AUTHENTICATED_GROUP)
    with pytest.raises(AccessDenied, match='--as-group "system:masters" is not allowed'):
        impersonation(roles(VIEWER), "ann", "c", DEV, as_groups=["system:masters"])
    with pytest.raises(AccessDenied, match='--as "root" is not allowed'):
        impersonation(roles(VIEWER), "ann", "c", DEV, as_user="root")
    assert impersonation(roles(VIEWER), "ann", "c", DEV, as_user="ann").user == "ann"


def test_several_users_must_be_chosen() -> None:
    two = role("two", RoleConditions(kubernetes_labels={"*": "*"}, kubernetes_users=["a", "b"]))
    with pytest.raises(AccessDenied, match="choose one with --as"):
        impersonation(roles(two), "ann", "c", DEV)
    assert impersonation(roles(two), "ann", "c", DEV, as_user="b").user == "b"


def test_cluster_labels_and_deny_are_named_in_refusals() -> None:
    with pytest.raises(AccessDenied, match="cluster labels do not match"):
        impersonation(roles(VIEWER), "ann", "c", {"env": "prod"})
    blocked = role("blocked", RoleConditions(), RoleConditions(kubernetes_labels={"env": "dev"}))
    with pytest.raises(AccessDenied, match="denied by role blocked"):
        impersonation(roles(VIEWER, blocked), "ann", "c", DEV)


DEV_PODS = role(
    "dev-pods",
    RoleConditions(
        kubernetes_labels={"*": "*"},
        kubernetes_groups=["g"],
        kubernetes_resources=[KubeResource(kind="pod", namespace="dev")],
    ),
)


def test_resources_limit_calls_to_what_they_name() -> None:
    rules = resource_rules(roles(DEV_PODS), DEV)
    rules.check(parse_request("GET", "/api/v1/namespaces/dev/pods/web/exec?command=sh"))
    rules.check(parse_request("GET", "/api/v1/pods"))  # a list: filtered, not refused
    rules.check(parse_request("GET", "/api"))  # discovery
    with pytest.raises(AccessDenied, match=r"exec on pod prod/api is not allowed.*resources"):
        rules.check(parse_request("POST", "/api/v1/namespaces/prod/pods/api/exec"))
    with pytest.raises(AccessDenied, match="kubernetes_resources"):
        rules.check(parse_request("GET", "/api/v1/nodes"))
    # A role without kubernetes_resources does not limit.
    assert not resource_rules(roles(VIEWER), DEV).filters
    # ... unless it makes the user nobody there: a role listing the cluster alone (a
    # contractor's standing role) leaves the granting role's limit in place.
    lister = role("lister", RoleConditions(kubernetes_labels={"*": "*"}))
    listed = resource_rules(roles(lister, DEV_PODS), DEV)
    with pytest.raises(AccessDenied, match="kubernetes_resources"):
        listed.check(parse_request("POST", "/api/v1/namespaces/prod/pods/api/exec"))
    listed.check(parse_request("GET", "/api/v1/namespaces/dev/pods/web/exec?command=sh"))


def test_deny_resources_win() -> None:
    no_exec = role(
        "no-exec",
        RoleConditions(),
        RoleConditions(kubernetes_resources=[KubeResource(kind="pod", verbs=["exec"])]),
    )
    rules = resource_rules(roles(VIEWER, no_exec), DEV)
    with pytest.raises(AccessDenied, match="denied by role no-exec"):
        rules.check(parse_request("POST", "/api/v1/namespaces/dev/pods/web/exec"))
    rules.check(parse_request("GET", "/api/v1/namespaces/dev/pods/web"))


def _pod(namespace: str, name: str) -> dict[str, object]:
    return {"metadata": {"namespace": namespace, "name": name}}


def test_lists_tables_and_watch_events_are_filtered() -> None:
    rules = resource_rules(roles(DEV_PODS), DEV)
    request = parse_request("GET", "/api/v1/pods")
    listing = {"kind": "PodList", "items": [_pod("dev", "web"), _pod("prod", "api")]}
    assert rules.filter_object(request, listing)["items"] == [_pod("dev", "web")]
    table = {"kind": "Table", "rows": [{"object": _pod("prod", "x")}, {"object": _pod("dev", "y")}]}
    assert [r["object"] for r in rules.filter_object(request, table)["rows"]] == [_pod("dev", "y")]
    watch = parse_request("GET", "/api/v1/pods?watch=1")
    hidden = json.dumps({"type": "ADDED", "object": {"kind": "Pod", **_pod("prod", "a")}})
    shown = json.dumps({"type": "ADDED", "object": {"kind": "Pod", **_pod("dev", "b")}})
    assert rules.filter_event(watch, hidden.encode()) is None
    assert rules.filter_event(watch, shown.encode()) is not None


def test_what_the_filter_cannot_read_is_not_passed_on() -> None:
    """YAML, protobuf or an unknown shape could hold what the rules take out: the
    filter fails closed (and asks for JSON, so kubectl's answers are read)."""
    rules = resource_rules(roles(DEV_PODS), DEV)
    listing = parse_request("GET", "/api/v1/pods")
    assert rules.filter_object(listing, "items:\n- metadata: {namespace: prod}") is None
    assert rules.filter_object(listing, {"kind": "Mystery", "data": ["prod/api"]}) is None
    status = {"kind": "Status", "status": "Failure", "message": "no"}
    assert rules.filter_object(listing, status) == status
    watch = parse_request("GET", "/api/v1/pods?watch=1")
    assert rules.filter_event(watch, b"\x0a\x05proto") is None
    assert rules.filter_event(watch, b'{"type": "ADDED"}') is None
    assert json_only("application/vnd.kubernetes.protobuf, application/json") == (
        "application/json"
    )
    table = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
    assert json_only(table) == table
    assert json_only("application/yaml") == "application/json"


@given(st.text(alphabet="abc-", min_size=1, max_size=8), st.text(alphabet="abc-", max_size=8))
def test_a_filtered_list_never_shows_other_namespaces(namespace: str, name: str) -> None:
    rules = resource_rules(roles(DEV_PODS), DEV)
    request = parse_request("GET", "/api/v1/pods")
    kept = rules.filter_object(request, {"items": [_pod(namespace, name)]})["items"]
    assert bool(kept) == (namespace == "dev")


@pytest.mark.parametrize(
    "target",
    [
        "/%61pi/v1/namespaces/prod/secrets",  # the API server decodes: /api/...
        "/api/v1/namespaces/dev/pods/web/%65xec?command=sh",  # exec, not get
        "/api/v1/namespaces/dev/pods/web%2Fexec",
        "/api/v1/namespaces/dev/../prod/pods",
        "/api/v1//namespaces/prod/pods",
        "/api/v1/namespaces/./prod/pods",
        "/api/v1/namespaces/dev/pods/..",
        "api/v1/pods",
    ],
)
def test_paths_the_api_server_would_read_otherwise_are_refused(target: str) -> None:
    with pytest.raises(BadParameter, match="malformed path"):
        check_path(target)


def test_paths_kubectl_sends_pass() -> None:
    for target in (
        "/api",
        "/api/v1/namespaces/dev/pods/web/exec?command=sh&command=-c&command=ls%20-l",
        "/apis/apps/v1/namespaces/dev/deployments/",
        "/api/v1/pods?fieldSelector=metadata.name%3Dweb&watch=true",
    ):
        check_path(target)


def test_the_legacy_watch_prefix_is_a_watch_of_what_follows() -> None:
    request = parse_request("GET", "/api/v1/watch/namespaces/prod/secrets")
    assert (request.verb, request.kind, request.namespace) == ("watch", "secret", "prod")
    named = parse_request("GET", "/api/v1/watch/namespaces/prod/secrets/db")
    assert (named.verb, named.name) == ("watch", "db")
