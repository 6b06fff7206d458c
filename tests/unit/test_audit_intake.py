"""What auth makes of the events services send (auth/audit_intake.py), from the sender's
side: what it may claim, and what auth decides for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certgate.api.identity import SYSTEM_NODE, SYSTEM_PROXY, Identity
from certgate.auth.audit_intake import checked_event
from certgate.errors import AccessDenied, BadParameter

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def service(name: str, role: str) -> Identity:
    return Identity(username=name, roles=(role,), expires=NOW + timedelta(hours=1), kind="service")


NODE = service("db-1", SYSTEM_NODE)
OTHER_NODE = service("db-2", SYSTEM_NODE)
PROXY = service("proxy-1", SYSTEM_PROXY)


def test_the_sender_is_stamped_from_its_identity() -> None:
    stored = checked_event(NODE, {"event": "exec", "fields": {"user": "alice"}}, NOW)
    assert stored["server_name"] == "db-1" and stored["server_kind"] == "node"
    assert stored["node"] == "db-1" and stored["server"] == "db-1"
    from_proxy = checked_event(PROXY, {"event": "exec", "fields": {"node": "web-1"}}, NOW)
    assert from_proxy["server"] == "proxy" and from_proxy["node"] == "web-1"


def test_ids_are_per_sender_so_one_cannot_shadow_anothers_events() -> None:
    item = {"id": "abc", "event": "exec", "fields": {}}
    first = checked_event(NODE, item, NOW)["uid"]
    assert checked_event(NODE, item, NOW)["uid"] == first  # a retry: the same uid
    assert checked_event(OTHER_NODE, item, NOW)["uid"] != first
    with pytest.raises(BadParameter):
        checked_event(NODE, {**item, "id": "../x y"}, NOW)


def test_the_senders_time_is_kept_unless_it_is_in_the_future() -> None:
    earlier = (NOW - timedelta(hours=3)).isoformat()
    item = {"event": "exec", "time": earlier, "fields": {}}
    assert checked_event(NODE, item, NOW)["time"] == earlier
    later = {**item, "time": (NOW + timedelta(hours=1)).isoformat()}
    assert checked_event(NODE, later, NOW)["time"] == NOW.isoformat()
    with pytest.raises(BadParameter):
        checked_event(NODE, {**item, "time": "2030-01-01T00:00:00"}, NOW)  # no timezone


@pytest.mark.parametrize(
    "item",
    [
        {"event": "user.delete", "fields": {"user": "admin", "name": "alice"}},
        {"event": "lock.created", "fields": {"user": "admin"}},
        {"event": "session.start", "fields": {"node": "db-2"}},
    ],
)
def test_a_node_cannot_write_as_auth_or_as_another_node(item: dict[str, object]) -> None:
    with pytest.raises(AccessDenied):
        checked_event(NODE, item, NOW)


@pytest.mark.parametrize("key", ["uid", "code", "time", "server_name", "server_kind"])
def test_stamps_cannot_be_sent_as_fields(key: str) -> None:
    with pytest.raises(BadParameter):
        checked_event(NODE, {"event": "exec", "fields": {key: "x"}}, NOW)


def test_users_send_no_events() -> None:
    user = Identity(username="alice", roles=(SYSTEM_NODE,), expires=NOW, kind="user")
    with pytest.raises(AccessDenied):
        checked_event(user, {"event": "exec", "fields": {}}, NOW)


def test_an_unknown_type_is_kept_as_unknown() -> None:
    stored = checked_event(NODE, {"event": "kube.frobnicate", "fields": {"verb": "get"}}, NOW)
    assert (stored["event"], stored["code"]) == ("unknown", "TCC00E")
    assert stored["unknown_event"] == "kube.frobnicate" and stored["verb"] == "get"
