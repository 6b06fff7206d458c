"""What `cgsh ssh TARGET`, `ssh -J` and the web terminal reach: a node's name wins, and a
hostname or address that several nodes answer to reaches none of them.

Before: the lookup took the first key that matched one node, so a rogue announcing
another node's address as its hostname drew `cgsh ssh root@10.0.0.5` to itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certgate.access.cached_access import CachedAccess
from certgate.api.identity import Identity
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.api.role import Role, RoleConditions, RoleSpec
from certgate.clock import FakeClock
from certgate.errors import BadParameter, NotFound
from tests.support.views import StubView

NOW = datetime(2030, 1, 1, tzinfo=UTC)
WEB_1 = Node(
    metadata=Metadata(name="web-1", labels={"env": "prod"}),
    spec=NodeSpec(addr="10.0.0.5:3022", hostname="db1.corp"),
)


def access(*nodes: Node) -> CachedAccess:
    role = Role(
        metadata=Metadata(name="prod"),
        spec=RoleSpec(allow=RoleConditions(logins=["ubuntu"], node_labels={"env": ["prod"]})),
    )
    view = StubView({"node": {n.name: n for n in nodes}, "role": {"prod": role}})
    view.connected = True
    return CachedAccess(view, cluster_name="test", clock=FakeClock(NOW))  # type: ignore[arg-type]


def node(name: str, addr: str, hostname: str = "", env: str = "prod") -> Node:
    return Node(
        metadata=Metadata(name=name, labels={"env": env}),
        spec=NodeSpec(addr=addr, hostname=hostname),
    )


def test_a_rogue_announcing_another_nodes_address_as_hostname_draws_nobody() -> None:
    rogue = node("evil", "6.6.6.6:3022", hostname="10.0.0.5")
    with pytest.raises(BadParameter) as refused:
        access(WEB_1, rogue).find_node("10.0.0.5")
    assert refused.value.message == (
        '"10.0.0.5" names 2 nodes (web-1 by address, evil by hostname): use the node\'s name'
    )
    # Each alone is found by it, as before.
    assert access(WEB_1).find_node("10.0.0.5").name == "web-1"
    assert access(rogue).find_node("10.0.0.5").name == "evil"


def test_a_shared_hostname_or_address_names_no_node() -> None:
    twin = node("web-2", "10.0.0.6:3022", hostname="db1.corp")
    with pytest.raises(BadParameter, match=r'"db1.corp" names 2 nodes \(web-1 by hostname'):
        access(WEB_1, twin).find_node("db1.corp")
    neighbour = node("web-3", "10.0.0.5:3023")
    with pytest.raises(BadParameter, match="web-3 by address"):
        access(WEB_1, neighbour).find_node("10.0.0.5")


def test_a_nodes_name_wins_over_another_nodes_hostname_or_address() -> None:
    rogue = node("evil", "6.6.6.6:3022", hostname="web-1")
    both = access(WEB_1, rogue)
    assert both.find_node("web-1").name == "web-1"
    assert both.find_node("web-1.test").name == "web-1"
    assert both.find_node("evil").name == "evil"
    assert both.find_node("db1.corp").name == "web-1"
    assert both.find_node("DB1.corp").name == "web-1"  # as ssh compares host names


def test_an_ambiguity_names_only_the_nodes_the_user_may_see() -> None:
    hidden = node("secret-1", "6.6.6.6:3022", hostname="10.0.0.5", env="vault")
    alice = Identity(
        username="alice", roles=("prod",), kind="user", expires=NOW + timedelta(hours=1)
    )
    checker = access(WEB_1, hidden)
    with pytest.raises(BadParameter) as refused:
        checker.resolve_node(alice, "10.0.0.5")
    assert "secret-1" not in refused.value.message
    assert "(web-1 by address, 1 more)" in refused.value.message
    # When the user sees none of them, the node is simply not there for them.
    other = node("secret-2", "6.6.6.7:3022", hostname="10.0.0.5", env="vault")
    with pytest.raises(NotFound, match=r'node "10\.0\.0\.5" not found'):
        access(hidden, other).resolve_node(alice, "10.0.0.5")
