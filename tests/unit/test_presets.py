"""The preset roles grant what their names promise, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import pytest

from certgate.access.rbac import RoleSet, validate_role
from certgate.api.role import RESOURCES, VERBS, RoleOptions
from certgate.auth.presets import preset_roles
from certgate.errors import AccessDenied

TRAITS = {
    "logins": ["alice", "ubuntu"],
    "kubernetes_groups": ["devs"],
    "kubernetes_users": ["alice@example.com"],
}


def preset(name: str) -> RoleSet:
    [found] = [r for r in preset_roles() if r.name == name]
    return RoleSet([found], TRAITS)


def test_names_descriptions_and_validity() -> None:
    roles = preset_roles()
    assert [r.name for r in roles] == ["access", "editor", "auditor", "access-plugin"]
    for role in roles:
        assert role.metadata.description
        validate_role(role)


def test_presets_are_fresh_copies() -> None:
    assert preset_roles() == preset_roles()
    assert preset_roles()[0] is not preset_roles()[0]


def test_access_uses_the_users_traits_everywhere() -> None:
    access = preset("access")
    assert access.logins() == ["alice", "ubuntu"]
    access.check_login("web-1", {"env": "prod"}, "alice")
    access.check_login("bare", {}, "ubuntu")
    with pytest.raises(AccessDenied):
        access.check_login("web-1", {}, "root")
    assert access.can_access_node({"any": "thing"})
    assert access.kubernetes_groups() == ["devs"]
    assert access.kubernetes_users() == ["alice@example.com"]
    assert access.can_access_kube({})
    assert not any(access.allows_rule(r, v) for r in RESOURCES for v in VERBS)
    assert access.options().port_forwarding is True
    assert access.options().max_session_ttl == RoleOptions().max_session_ttl


def test_editor_may_do_everything_through_the_api_but_log_in_nowhere() -> None:
    editor = preset("editor")
    assert all(editor.allows_rule(r, v) for r in RESOURCES for v in VERBS)
    assert editor.logins() == []
    assert not editor.can_access_node({"env": "dev"})
    assert editor.kubernetes_groups() == []


def test_auditor_reads_sessions_events_and_the_access_map_only() -> None:
    auditor = preset("auditor")
    allowed = {(r, v) for r in RESOURCES for v in VERBS if auditor.allows_rule(r, v)}
    assert allowed == {
        ("session", "list"),
        ("session", "read"),
        ("event", "list"),
        ("event", "read"),
        ("access", "list"),
    }
    assert auditor.logins() == []
    assert auditor.options().max_session_ttl == timedelta(hours=8)
    # Watches anyone's live sessions, never types into them.
    assert auditor.join_modes(["access"]) == ["observer"]
    assert auditor.join_modes(["editor", "anything"]) == ["observer"]


def test_only_the_auditor_joins_sessions() -> None:
    assert preset("access").join_modes(["access"]) == []
    assert preset("editor").join_modes(["access"]) == []


def test_access_and_editor_together() -> None:
    both = RoleSet(preset_roles()[:2], TRAITS)
    assert both.logins() == ["alice", "ubuntu"]
    assert both.allows_rule("role", "create")


def test_access_plugin_reads_access_requests_and_nothing_else() -> None:
    plugin = preset("access-plugin")
    allowed = {(r, v) for r in RESOURCES for v in VERBS if plugin.allows_rule(r, v)}
    assert allowed == {("access_request", "list"), ("access_request", "read")}
    assert plugin.logins() == []
    assert not plugin.can_access_node({"env": "dev"})
    assert plugin.kubernetes_groups() == []
    assert not plugin.can_access_kube({})
    assert plugin.options().max_session_ttl == timedelta(days=30)
