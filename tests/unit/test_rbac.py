"""RoleSet: logins, node and kube access, API rules and merged options."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.access.rbac import LabelSelector, RoleSet, validate_role
from certgate.api.role import Role
from certgate.auth.presets import preset_roles
from certgate.errors import AccessDenied, BadParameter


def role(
    name: str,
    allow: dict[str, Any] | None = None,
    deny: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Role:
    # Built from plain data, the way `cgctl create` builds it from YAML.
    return Role.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"allow": allow or {}, "deny": deny or {}, "options": options or {}},
        }
    )


def denied(role_set: RoleSet, node: str, labels: dict[str, str], login: str) -> str:
    with pytest.raises(AccessDenied) as info:
        role_set.check_login(node, labels, login)
    return str(info.value)


DEVELOPER = role(
    "developer",
    allow={"logins": ["{{internal.logins}}", "ubuntu"], "node_labels": {"env": ["dev", "staging"]}},
    deny={"logins": ["root"]},
)
TRAITS = {"logins": ["alice", "root"]}


# Logins


def test_logins_expand_deduplicate_sort_and_subtract_deny() -> None:
    other = role("other", allow={"logins": ["ubuntu", "zed"], "node_labels": {"*": "*"}})
    assert RoleSet([DEVELOPER, other], TRAITS).logins() == ["alice", "ubuntu", "zed"]


def test_logins_drop_invalid_unix_names_from_traits() -> None:
    traits = {"logins": ["alice", "bob;rm -rf /", "$(id)", "-oProxyCommand", "", "a b"]}
    assert RoleSet([DEVELOPER], traits).logins() == ["alice", "ubuntu"]


def test_logins_keep_a_login_denied_only_on_some_nodes() -> None:
    prod_root = role("no-prod-root", deny={"logins": ["root"], "node_labels": {"env": "prod"}})
    ops = role("ops", allow={"logins": ["root"], "node_labels": {"*": "*"}})
    role_set = RoleSet([ops, prod_root], {})
    assert role_set.logins() == ["root"]
    role_set.check_login("dev-1", {"env": "dev"}, "root")
    assert "denied by role no-prod-root" in denied(role_set, "db-1", {"env": "prod"}, "root")


def test_deny_every_node_leaves_no_logins() -> None:
    locked = role("locked", deny={"node_labels": {"*": "*"}})
    assert RoleSet([DEVELOPER, locked], TRAITS).logins() == []


def test_no_roles_no_logins() -> None:
    assert RoleSet([], TRAITS).logins() == []


def test_missing_trait_drops_the_entry() -> None:
    assert RoleSet([DEVELOPER], {}).logins() == ["ubuntu"]


# check_login


def test_check_login_allows_matching_login_and_labels() -> None:
    RoleSet([DEVELOPER], TRAITS).check_login("web-1", {"env": "dev"}, "alice")
    RoleSet([DEVELOPER], TRAITS).check_login("web-1", {"env": "staging"}, "ubuntu")


def test_message_login_not_allowed() -> None:
    message = denied(RoleSet([DEVELOPER], TRAITS), "web-1", {"env": "dev"}, "bob")
    assert message == 'access denied to bob@web-1: login "bob" is not allowed by your roles'


def test_message_login_denied_by_role() -> None:
    message = denied(RoleSet([DEVELOPER], TRAITS), "web-1", {"env": "dev"}, "root")
    assert message == 'access denied to root@web-1: login "root" is denied by role developer'


def test_message_labels_do_not_match() -> None:
    message = denied(RoleSet([DEVELOPER], TRAITS), "web-1", {"env": "prod"}, "alice")
    assert message == "access denied to alice@web-1: node labels do not match any of your roles"


def test_message_node_denied_by_labels_only_deny() -> None:
    no_prod = role("no-prod", deny={"node_labels": {"env": "prod"}})
    ops = role("ops", allow={"logins": ["alice"], "node_labels": {"*": "*"}})
    message = denied(RoleSet([ops, no_prod], {}), "db-1", {"env": "prod"}, "alice")
    assert message == "access denied to alice@db-1: this node is denied by role no-prod"


def test_logins_and_labels_must_match_in_the_same_role() -> None:
    prod = role("prod", allow={"logins": ["root"], "node_labels": {"env": "prod"}})
    dev = role("dev", allow={"logins": ["ubuntu"], "node_labels": {"env": "dev"}})
    role_set = RoleSet([prod, dev], {})
    role_set.check_login("db-1", {"env": "prod"}, "root")
    role_set.check_login("web-1", {"env": "dev"}, "ubuntu")
    assert denied(role_set, "web-1", {"env": "dev"}, "root") == (
        'access denied to root@web-1: login "root" is not allowed on this node by your roles'
    )
    assert "node labels do not match" in denied(role_set, "x", {"env": "qa"}, "root")


def test_deny_wins_over_another_roles_allow() -> None:
    ops = role("ops", allow={"logins": ["root"], "node_labels": {"*": "*"}})
    assert "denied by role developer" in denied(
        RoleSet([ops, DEVELOPER], TRAITS), "web-1", {"env": "dev"}, "root"
    )


def test_deny_names_the_first_role_by_name_whatever_the_order() -> None:
    ops = role("ops", allow={"logins": ["root"], "node_labels": {"*": "*"}})
    b = role("b-deny", deny={"logins": ["root"]})
    a = role("a-deny", deny={"logins": ["root"]})
    for roles in ([ops, b, a], [a, ops, b]):
        assert denied(RoleSet(roles, {}), "n", {}, "root").endswith("denied by role a-deny")


def test_deny_login_template_with_missing_trait_denies_nothing() -> None:
    ops = role(
        "ops",
        allow={"logins": ["root"], "node_labels": {"*": "*"}},
        deny={"logins": ["{{external.banned}}"]},
    )
    RoleSet([ops], {}).check_login("n", {}, "root")
    assert denied(RoleSet([ops], {"banned": ["root"]}), "n", {}, "root").endswith(
        'login "root" is denied by role ops'
    )


def test_messages_stay_on_one_line() -> None:
    message = denied(RoleSet([DEVELOPER], TRAITS), "web\n1", {}, "a\nb")
    assert "\n" not in message
    assert message.startswith('access denied to a\\nb@web\\n1: login "a\\nb"')


# Labels


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"*": "*"}, {}, True),
        ({"*": "*"}, {"env": "prod"}, True),
        ({}, {"env": "prod"}, False),
        ({"env": "prod"}, {"env": "prod", "team": "x"}, True),
        ({"env": "prod"}, {"env": "dev"}, False),
        ({"env": "prod"}, {}, False),
        ({"env": ["dev", "staging"]}, {"env": "staging"}, True),
        ({"env": ["dev", "staging"]}, {"env": "prod"}, False),
        ({"env": "*"}, {"env": "anything"}, True),
        ({"env": "*"}, {"team": "x"}, False),
        ({"env": "prod", "team": "db"}, {"env": "prod", "team": "db"}, True),
        ({"env": "prod", "team": "db"}, {"env": "prod", "team": "web"}, False),
        ({"host": "^web-[0-9]+$"}, {"host": "web-12"}, True),
        ({"host": "^web-[0-9]+$"}, {"host": "web-12x"}, False),
        ({"host": "^web-[0-9]+$"}, {"host": "xweb-12"}, False),
        ({"host": "^web|db$"}, {"host": "web-1"}, False),  # full match, not search
        ({"host": "web-*"}, {"host": "web-1"}, True),
        ({"host": "web-*"}, {"host": "db-1"}, False),
        ({"host": "web.1"}, {"host": "webx1"}, False),  # literal, not regex
        ({"*": "prod"}, {"env": "prod"}, False),
    ],
)
def test_label_matching(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector(selector, {}).matches(labels) is expected


def test_label_templates_in_keys_and_values() -> None:
    traits = {"team": ["db", "web"], "key": ["owner"], "two": ["a", "b"]}
    assert LabelSelector({"team": "{{external.team}}"}, traits).matches({"team": "web"})
    assert not LabelSelector({"team": "{{external.team}}"}, traits).matches({"team": "x"})
    assert LabelSelector({"{{external.key}}": "me"}, traits).matches({"owner": "me"})
    assert LabelSelector({"team": "t-{{external.team}}-*"}, traits).matches({"team": "t-db-1"})
    # A key must expand to exactly one key; a missing trait never matches.
    assert not LabelSelector({"{{external.two}}": "*"}, traits).matches({"a": "x", "b": "x"})
    assert not LabelSelector({"team": "{{external.missing}}"}, traits).matches({"team": ""})


def test_trait_values_are_matched_literally() -> None:
    traits = {"team": ["*", "d.*"]}
    selector = LabelSelector({"team": "{{external.team}}"}, traits)
    assert selector.matches({"team": "*"})
    assert not selector.matches({"team": "anything"})
    assert not selector.matches({"team": "db"})
    regex = LabelSelector({"team": "^{{external.team}}-[0-9]$"}, traits)
    assert regex.matches({"team": "d.*-1"})
    assert not regex.matches({"team": "dx-1"})


def test_can_access_node() -> None:
    role_set = RoleSet(
        [
            DEVELOPER,
            role("no-secret", deny={"node_labels": {"secret": "*"}}),
        ],
        TRAITS,
    )
    assert role_set.can_access_node({"env": "dev"})
    assert not role_set.can_access_node({"env": "prod"})
    assert not role_set.can_access_node({"env": "dev", "secret": "yes"})
    # A deny that names logins hides no node: other logins may still be used there.
    assert RoleSet([DEVELOPER], TRAITS).can_access_node({"env": "dev"})


# Kubernetes


KUBE = role(
    "kube",
    allow={
        "kubernetes_groups": ["{{internal.kubernetes_groups}}", "viewers"],
        "kubernetes_users": ["{{internal.kubernetes_users}}"],
        "kubernetes_labels": {"env": "dev"},
    },
    deny={"kubernetes_groups": ["system:masters"]},
)
KUBE_PROD = role(
    "kube-prod",
    allow={"kubernetes_groups": ["prod-admins"], "kubernetes_labels": {"env": "prod"}},
)
KUBE_TRAITS = {"kubernetes_groups": ["devs", "system:masters"], "kubernetes_users": ["alice"]}


def test_kubernetes_groups_and_users() -> None:
    role_set = RoleSet([KUBE, KUBE_PROD], KUBE_TRAITS)
    assert role_set.kubernetes_groups() == ["devs", "prod-admins", "viewers"]
    assert role_set.kubernetes_groups({"env": "dev"}) == ["devs", "viewers"]
    assert role_set.kubernetes_groups({"env": "prod"}) == ["prod-admins"]
    assert role_set.kubernetes_users() == ["alice"]
    assert role_set.kubernetes_users({"env": "prod"}) == []


def test_can_access_kube() -> None:
    no_secret = role("no-secret", deny={"kubernetes_labels": {"secret": "*"}})
    role_set = RoleSet([KUBE, KUBE_PROD, no_secret], KUBE_TRAITS)
    assert role_set.can_access_kube({"env": "dev"})
    assert role_set.can_access_kube({"env": "prod"})
    assert not role_set.can_access_kube({"env": "qa"})
    assert not role_set.can_access_kube({"env": "dev", "secret": "1"})


# API rules


def test_rules_allow_deny_and_wildcards() -> None:
    auditor = role("auditor", allow={"rules": [{"resources": ["session"], "verbs": ["list"]}]})
    editor = role("editor", allow={"rules": [{"resources": ["*"], "verbs": ["*"]}]})
    no_delete = role("no-delete", deny={"rules": [{"resources": ["*"], "verbs": ["delete"]}]})
    assert RoleSet([auditor], {}).allows_rule("session", "list")
    assert not RoleSet([auditor], {}).allows_rule("session", "delete")
    assert RoleSet([editor], {}).allows_rule("role", "delete")
    assert not RoleSet([editor, no_delete], {}).allows_rule("role", "delete")
    assert RoleSet([editor, no_delete], {}).allows_rule("role", "update")
    RoleSet([auditor], {}).check_rule("session", "list")


def test_rule_messages() -> None:
    auditor = role("auditor", allow={"rules": [{"resources": ["session"], "verbs": ["list"]}]})
    no_delete = role("no-delete", deny={"rules": [{"resources": ["role"], "verbs": ["*"]}]})
    with pytest.raises(AccessDenied, match=r"^access denied to delete user: not allowed by your"):
        RoleSet([auditor], {}).check_rule("user", "delete")
    with pytest.raises(AccessDenied, match=r"^access denied to read role: denied by role no-del"):
        RoleSet([auditor, no_delete], {}).check_rule("role", "read")


# Options


def test_options_merge() -> None:
    a = role(
        "a",
        options={
            "max_session_ttl": "8h",
            "forward_agent": True,
            "port_forwarding": False,
            "record_session": {"ssh": "strict"},
            "client_idle_timeout": "30m",
        },
    )
    b = role(
        "b",
        options={
            "max_session_ttl": "2h",
            "port_forwarding": False,
            "record_session": False,
            "locking_mode": "strict",
            "require_session_mfa": True,
            "client_idle_timeout": "10m",
        },
    )
    c = role("c", options={"max_session_ttl": "4h", "port_forwarding": True})
    merged = RoleSet([a, b, c], {}).options()
    assert merged.max_session_ttl == timedelta(hours=2)
    assert merged.forward_agent is True
    assert merged.port_forwarding is True
    assert merged.record_session.ssh == "strict"
    assert merged.locking_mode == "strict"
    assert merged.require_session_mfa is True
    assert merged.client_idle_timeout == timedelta(minutes=10)
    only_ab = RoleSet([a, b], {}).options()
    assert only_ab.port_forwarding is False
    assert RoleSet([b], {}).options().record_session.ssh == "off"
    assert RoleSet([c], {}).options().client_idle_timeout is None
    assert RoleSet([c], {}).options().locking_mode == "best_effort"


def test_options_of_no_roles_forward_nothing() -> None:
    merged = RoleSet([], {}).options()
    assert merged.forward_agent is False
    assert merged.port_forwarding is False


def test_adjust_ttl() -> None:
    role_set = RoleSet([role("a", options={"max_session_ttl": "1h"})], {})
    assert role_set.adjust_ttl(timedelta(hours=8)) == timedelta(hours=1)
    assert role_set.adjust_ttl(timedelta(minutes=5)) == timedelta(minutes=5)
    with pytest.raises(BadParameter):
        role_set.adjust_ttl(timedelta(0))


# Sessions and requests


def test_join_policies_union() -> None:
    a = role("a", allow={"join_sessions": [{"roles": ["*"], "modes": ["observer"]}]})
    b = role(
        "b",
        allow={
            "join_sessions": [
                {"roles": ["*"], "modes": ["observer"]},
                {"roles": ["dev"], "kinds": ["ssh"], "modes": ["peer"]},
            ]
        },
    )
    policies = RoleSet([a, b], {}).join_policies()
    assert len(policies) == 2
    assert {tuple(p.modes) for p in policies} == {("observer",), ("peer",)}
    assert policies == RoleSet([b, a], {}).join_policies()


def test_join_modes_follow_the_owners_roles_and_kind() -> None:
    watcher = role(
        "watcher",
        allow={
            "join_sessions": [
                {"roles": ["dev*"], "kinds": ["ssh"], "modes": ["observer"]},
                {"roles": ["pair"], "modes": ["peer"]},
            ]
        },
    )
    rs = RoleSet([watcher], {})
    assert rs.join_modes(["developer"]) == ["observer"]
    assert rs.join_modes(["ops", "developer"]) == ["observer"]
    assert rs.join_modes(["ops"]) == []
    assert rs.join_modes(["developer"], kind="k8s") == []
    # A peer may also watch.
    assert rs.join_modes(["pair"]) == ["observer", "peer"]
    assert rs.join_modes(["pair"], kind="k8s") == ["observer", "peer"]
    # No join_sessions at all: nothing.
    assert RoleSet([DEVELOPER], {}).join_modes(["developer"]) == []


def test_join_modes_deny_wins() -> None:
    allow = role("a", allow={"join_sessions": [{"roles": ["*"], "modes": ["observer", "peer"]}]})
    deny = role("b", deny={"join_sessions": [{"roles": ["admin*"], "modes": ["peer"]}]})
    rs = RoleSet([allow, deny], {})
    assert rs.join_modes(["dev"]) == ["observer", "peer"]
    assert rs.join_modes(["admins"]) == ["observer"]
    # Every mode sees the session: denying the sight denies them all.
    no_watch = role("c", deny={"join_sessions": [{"roles": ["*"], "modes": ["observer"]}]})
    assert RoleSet([allow, no_watch], {}).join_modes(["dev"]) == []


def test_request_and_review_roles() -> None:
    a = role(
        "a",
        allow={
            "request": {"roles": ["kube-admin", "db-admin", "root-admin"]},
            "review_requests": {"roles": ["developer", "contractor"]},
        },
    )
    b = role(
        "b",
        allow={"request": {"roles": ["auditor"]}},
        deny={"request": {"roles": ["root-*"]}, "review_requests": {"roles": ["^contr.*$"]}},
    )
    role_set = RoleSet([a, b], {})
    assert role_set.request_roles() == ["auditor", "db-admin", "kube-admin"]
    assert role_set.review_roles() == ["developer"]
    everything = role("c", deny={"request": {"roles": ["*"]}})
    assert RoleSet([a, everything], {}).request_roles() == []


# Validation


def test_validate_accepts_presets_and_the_design_example() -> None:
    for preset in preset_roles():
        validate_role(preset)
    validate_role(DEVELOPER)
    validate_role(KUBE)


@pytest.mark.parametrize(
    ("allow", "deny", "message"),
    [
        ({"logins": ["{{internal.logins}"]}, {}, 'role "bad": allow.logins: invalid template'),
        ({"logins": ["ro ot"]}, {}, 'role "bad": allow.logins: invalid login "ro ot"'),
        ({}, {"logins": ["{{foo.x}}"]}, 'role "bad": deny.logins: invalid template'),
        ({"kubernetes_groups": ["{{x}}"]}, {}, "allow.kubernetes_groups: invalid template"),
        ({"kubernetes_users": ["{{x}}"]}, {}, "allow.kubernetes_users: invalid template"),
        ({"node_labels": {"{{x.y}}": "a"}}, {}, "allow.node_labels: invalid template"),
        ({"node_labels": {"env": "{{x.y}}"}}, {}, "allow.node_labels: invalid template"),
        ({"node_labels": {"*": "prod"}}, {}, 'the key "*" only takes the value "*"'),
        ({"node_labels": {"env": "^(prod$"}}, {}, "invalid regular expression"),
        ({"kubernetes_labels": {"env": "^(a{{external.x}}$"}}, {}, "invalid regular expression"),
        ({"request": {"roles": ["^(x$"]}}, {}, "allow.request.roles: invalid regular"),
        ({}, {"review_requests": {"roles": ["^(x$"]}}, "deny.review_requests.roles: invalid"),
    ],
)
def test_validate_refuses_bad_roles(
    allow: dict[str, Any], deny: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadParameter) as info:
        validate_role(role("bad", allow=allow, deny=deny))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_role_set_refuses_malformed_roles() -> None:
    with pytest.raises(BadParameter):
        RoleSet([role("bad", allow={"logins": ["{{nope}}"]})], {})


# Properties

_logins = st.sampled_from(["root", "alice", "bob", "ubuntu", "admin"])
_label_keys = st.sampled_from(["env", "team", "os"])
_label_values = st.sampled_from(["dev", "prod", "db", "web", "linux"])
_labels = st.dictionaries(_label_keys, _label_values, max_size=3)
_selector = st.one_of(
    st.just({"*": "*"}),
    st.dictionaries(
        _label_keys,
        st.one_of(_label_values, st.just("*"), st.lists(_label_values, min_size=1, max_size=3)),
        max_size=2,
    ),
)


@st.composite
def _roles(draw: st.DrawFn) -> Role:
    options: dict[str, Any] = {
        "max_session_ttl": timedelta(minutes=draw(st.integers(1, 24 * 60))),
        "forward_agent": draw(st.booleans()),
        "port_forwarding": draw(st.booleans()),
        "record_session": {"ssh": draw(st.sampled_from(["off", "best_effort", "strict"]))},
        "locking_mode": draw(st.sampled_from(["best_effort", "strict"])),
        "require_session_mfa": draw(st.booleans()),
    }
    if draw(st.booleans()):
        options["client_idle_timeout"] = timedelta(minutes=draw(st.integers(1, 600)))
    allow = {"logins": draw(st.lists(_logins, max_size=3)), "node_labels": draw(_selector)}
    deny: dict[str, Any] = {}
    if draw(st.booleans()):
        deny["logins"] = draw(st.lists(_logins, min_size=1, max_size=2))
    if draw(st.booleans()):
        deny["node_labels"] = draw(_selector)
    name = draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True))
    return role(name, allow=allow, deny=deny, options=options)


def _unique_names(roles: list[Role]) -> bool:
    return len({r.name for r in roles}) == len(roles)


@given(
    st.lists(_logins, max_size=4),
    st.lists(_logins, min_size=1, max_size=3),
    _selector,
    _selector,
    _labels,
    _logins,
)
def test_deny_always_wins(
    allowed: list[str],
    denied_logins: list[str],
    allow_labels: dict[str, Any],
    deny_labels: dict[str, Any],
    node_labels: dict[str, str],
    login: str,
) -> None:
    grant = role("grant", allow={"logins": allowed, "node_labels": allow_labels})
    everywhere = role("everywhere", deny={"logins": denied_logins})
    some_nodes = role("some", deny={"logins": denied_logins, "node_labels": deny_labels})
    role_set = RoleSet([grant, everywhere], {})
    assert not set(role_set.logins()) & set(denied_logins)
    if login in denied_logins:
        with pytest.raises(AccessDenied):
            role_set.check_login("n", node_labels, login)
        scoped = RoleSet([grant, some_nodes], {})
        if LabelSelector(deny_labels, {}).matches(node_labels):
            with pytest.raises(AccessDenied):
                scoped.check_login("n", node_labels, login)


@given(_labels)
def test_wildcard_selector_matches_any_labels(labels: dict[str, str]) -> None:
    assert LabelSelector({"*": "*"}, {}).matches(labels)
    open_role = role("open", allow={"logins": ["alice"], "node_labels": {"*": "*"}})
    RoleSet([open_role], {}).check_login("n", labels, "alice")


@given(st.lists(_roles(), min_size=1, max_size=5).filter(_unique_names), st.randoms(), _labels)
def test_merging_is_order_independent(roles: list[Role], rng: Any, labels: dict[str, str]) -> None:
    shuffled = list(roles)
    rng.shuffle(shuffled)
    first, second = RoleSet(roles, {}), RoleSet(shuffled, {})
    assert first.options() == second.options()
    assert first.logins() == second.logins()
    assert first.can_access_node(labels) == second.can_access_node(labels)
    for login in first.logins():
        outcomes = []
        for role_set in (first, second):
            try:
                role_set.check_login("n", labels, login)
                outcomes.append("ok")
            except AccessDenied as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]


@given(st.lists(_roles(), min_size=1, max_size=5).filter(_unique_names))
def test_max_session_ttl_is_the_minimum(roles: list[Role]) -> None:
    merged = RoleSet(roles, {}).options()
    assert merged.max_session_ttl == min(r.spec.options.max_session_ttl for r in roles)
    assert RoleSet(roles, {}).adjust_ttl(timedelta(days=30)) == merged.max_session_ttl
