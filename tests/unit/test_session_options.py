"""Role options of live sessions: how they parse, how several roles merge, and the
SessionPolicy and refusals the session layer builds from them (srv/authorize.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from certgate.access.cached_access import CachedAccess
from certgate.access.rbac import RoleSet
from certgate.api.identity import Identity
from certgate.api.role import Role
from certgate.errors import AccessDenied
from certgate.srv.authorize import authorize_join, policy_for, session_mfa_refusal
from tests.support.views import StubView


def role(name: str, **options: Any) -> Role:
    return Role.model_validate(
        {"metadata": {"name": name}, "spec": {"allow": {"logins": ["u"]}, "options": options}}
    )


def merged(*roles: Role) -> Any:
    return RoleSet(list(roles), {}).options()


def test_record_session_is_per_kind_and_merges_per_kind() -> None:
    a = role("a", record_session={"ssh": "strict", "k8s": "best_effort"})
    b = role("b", record_session={"ssh": "off", "k8s": "off"})
    options = merged(a, b)
    assert (options.record_session.ssh, options.record_session.k8s) == ("strict", "best_effort")
    assert options.record_session.mode("ssh") == "strict"
    assert options.record_session.mode("k8s") == "best_effort"
    assert options.record_session.mode("web") == "strict"  # web terminal sessions are SSH


def test_record_session_bool_sets_every_kind() -> None:
    off = role("off", record_session=False).spec.options.record_session
    assert (off.ssh, off.k8s) == ("off", "off")
    with pytest.raises(ValidationError):
        role("bad", record_session={"ssh": "strict", "desktop": "off"})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), False),  # nobody says: loopback
        ((True,), True),
        ((True, None), True),  # a role that is silent does not restrict
        ((True, False), False),  # a role that says false wins
        ((False, None), False),
    ],
)
def test_ssh_remote_bind_any_explicit_false_wins(
    values: tuple[bool | None, ...], expected: bool
) -> None:
    roles = [role(f"r{i}", ssh_remote_bind_any=v) for i, v in enumerate(values)] or [role("x")]
    assert merged(*roles).ssh_remote_bind_any is expected


def test_disconnect_expired_cert_and_mfa_are_on_if_any_role_says_so() -> None:
    options = merged(role("a"), role("b", disconnect_expired_cert=True))
    assert options.disconnect_expired_cert
    assert not merged(role("a"), role("b")).disconnect_expired_cert


def test_client_idle_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        role("bad", client_idle_timeout="0s")
    assert merged(role("a", client_idle_timeout="10m"), role("b", client_idle_timeout="3s")) \
        .client_idle_timeout == timedelta(seconds=3)  # fmt: skip


def test_policy_carries_the_monitor_limits() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    identity = Identity(username="al", roles=("a",), logins=("u",), expires=expires)
    watched = RoleSet([role("a", client_idle_timeout="90s", disconnect_expired_cert=True)], {})
    policy = policy_for(watched, identity)
    assert policy.idle_timeout == 90.0 and policy.expires == expires
    assert not policy.remote_bind_any
    plain = policy_for(RoleSet([role("a")], {}), identity)
    assert plain.idle_timeout is None and plain.expires is None


def test_a_joiner_gets_its_own_limits_and_nothing_to_forward() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    pair = Role.model_validate(
        {
            "metadata": {"name": "pair"},
            "spec": {
                "allow": {"join_sessions": [{"roles": ["dev"], "modes": ["peer"]}]},
                "options": {
                    "client_idle_timeout": "90s",
                    "disconnect_expired_cert": True,
                    "port_forwarding": True,
                    "forward_agent": True,
                    "ssh_remote_bind_any": True,
                },
            },
        }
    )
    access = CachedAccess(StubView({"role": {"pair": pair, "dev": role("dev")}}))  # type: ignore[arg-type]
    owner = Identity(username="al", roles=("dev",), logins=("u",), expires=expires)
    joiner = Identity(username="pat", roles=("pair",), logins=(), expires=expires)
    policy = authorize_join(access, joiner, owner, "peer", "node-1")
    assert (policy.idle_timeout, policy.expires) == (90.0, expires)
    assert not (policy.port_forwarding or policy.forward_agent or policy.remote_bind_any)
    with pytest.raises(AccessDenied, match="do not allow joining al's sessions as peer"):
        authorize_join(access, Identity(username="eve", roles=("dev",)), owner, "peer", "n")


def test_session_mfa_refusal_names_the_role() -> None:
    assert session_mfa_refusal(RoleSet([role("a")], {})) is None
    refusal = session_mfa_refusal(RoleSet([role("a"), role("b", require_session_mfa=True)], {}))
    assert refusal == (
        'access denied: role "b" requires per-session MFA, which this cluster does not support yet'
    )
