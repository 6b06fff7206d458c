"""A rogue host with any node join token cannot make itself the node users mean.

Users reach a node by its name, hostname or address, and trust a host certificate for
what they typed. Before: a join as an agentless node's name got a certificate for it
and its heartbeats replaced the admin's record; a join named like another node's
address (or with it as a principal) got a certificate for that address; a heartbeat
could announce another node's address as its hostname (auth/host_name_rules.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.api.identity import Identity
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.auth.server import AuthServer
from certgate.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from certgate.rpc.identity_files import new_key
from tests.support.auth_server import started_auth_server
from tests.support.wait import eventually_async

TTL = timedelta(seconds=30)
AGENTLESS = Node(
    metadata=Metadata(name="web-1", labels={"env": "prod"}),
    spec=NodeSpec(addr="10.0.0.5:22", sub_kind="openssh"),
)


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with started_auth_server(tmp_path) as server:
        yield server


async def join(
    auth: AuthServer, name: str, principals: list[str], client_addr: str = "6.6.6.6"
) -> Identity:
    """A join with an ordinary node token, not bound to a name (what a rogue holds)."""
    token = await auth.add_token(["node"], timedelta(minutes=5), "admin")
    _, public_key = new_key()
    bundle = await auth.join(token.name, "node", public_key, name, principals, client_addr)
    return bundle.identity


def beat(name: str, addr: str, hostname: str = "") -> Node:
    return Node(
        metadata=Metadata(name=name, labels={"env": "prod"}),
        spec=NodeSpec(addr=addr, hostname=hostname),
    )


async def mirrored(auth: AuthServer, name: str) -> None:
    """Until auth's mirror of the nodes (and so its index of their names, fed with it)
    has node `name`: the store's watch brings every write there."""
    key = auth.nodes.key(name)
    await eventually_async(lambda: any(item.key == key for item in auth.node_mirror.items()))


async def announced(auth: AuthServer, identity: Identity, node: Node) -> None:
    await auth.heartbeat(identity, node, TTL)
    await mirrored(auth, node.name)


async def events(auth: AuthServer, event: str) -> list[dict[str, Any]]:
    found, _ = await auth.audit.search(event_types=[event])
    return found


async def test_a_join_cannot_take_an_agentless_nodes_name(auth: AuthServer) -> None:
    await auth.put_resource(AGENTLESS, "admin", False)
    with pytest.raises(AccessDenied, match='"web-1" is an agentless node an admin registered'):
        await join(auth, "web-1", ["web-1"])
    stored = await auth.nodes.get("web-1")
    assert stored.spec == AGENTLESS.spec
    failures = await events(auth, "join.failure")
    assert [(e["name"], e["addr"]) for e in failures] == [("web-1", "6.6.6.6")]
    # Removing the node frees the name (what the refusal says to do).
    await auth.delete_resource("node", "web-1", "admin")
    assert (await join(auth, "web-1", [])).username == "web-1"


async def test_an_agentless_node_registered_before_names_were_claimed_is_kept(
    auth: AuthServer,
) -> None:
    # Written as an older auth did: the node record, and no claim of its name.
    await auth.nodes.upsert(AGENTLESS)
    with pytest.raises(AccessDenied, match="is an agentless node an admin registered"):
        await join(auth, "web-1", [])
    assert (await auth.nodes.get("web-1")).spec == AGENTLESS.spec


async def test_a_heartbeat_never_replaces_an_agentless_record(auth: AuthServer) -> None:
    # A node that joined the name before an admin registered it as agentless (a store
    # from before names were claimed): the admin's record stands against its beats.
    rogue = await join(auth, "web-1", [])
    await auth.nodes.upsert(AGENTLESS)
    await mirrored(auth, "web-1")
    with pytest.raises(AccessDenied, match="a node cannot announce it"):
        await auth.heartbeat(rogue, beat("web-1", "6.6.6.6:3022", "web-1"), TTL)
    assert (await auth.nodes.get("web-1")).spec == AGENTLESS.spec
    # And an admin cannot register a name a joined node holds without removing it.
    with pytest.raises(AlreadyExists, match='remove it first with "cgctl rm node/web-1"'):
        await auth.put_resource(AGENTLESS, "admin", True)


async def test_a_join_cannot_take_another_nodes_address_or_hostname(auth: AuthServer) -> None:
    real = await join(auth, "web-1", ["localhost", "127.0.0.1", "10.0.0.5", "db1.corp"], "10.0.0.5")
    await announced(auth, real, beat("web-1", "10.0.0.5:3022", "db1.corp"))

    refusals = [
        ("10.0.0.5", [], 'the name "10.0.0.5" is the address of node "web-1"'),
        ("db1.corp", [], 'the name "db1.corp" is the hostname of node "web-1"'),
        ("evil", ["10.0.0.5"], 'principal "10.0.0.5" is the address of node "web-1"'),
        ("evil", ["DB1.corp."], 'principal "DB1.corp." is the hostname of node "web-1"'),
        ("evil", ["web-1.test"], 'principal "web-1.test" is the name of another node'),
        # The cluster's own public names: a node's certificate is also a TLS server
        # certificate from the host CA that clients of auth and the proxy pin.
        ("evil", ["proxy"], 'principal "proxy" is the proxy\'s public address'),
        ("auth", [], 'the name "auth" is auth\'s address'),
    ]
    for name, principals, message in refusals:
        with pytest.raises(AccessDenied, match=message):
            await join(auth, name, principals)
    failures = await events(auth, "join.failure")
    assert len(failures) == len(refusals)
    assert all(e["addr"] == "6.6.6.6" for e in failures)
    with pytest.raises(BadParameter, match='invalid host name "localhost": it names every'):
        await join(auth, "localhost", [])

    # What legitimate hosts do still works: loopback names are every host's own, and a
    # second node on web-1's machine joins from its address.
    await join(auth, "web-2", ["localhost", "127.0.0.1", "::1", "10.0.0.5"], "10.0.0.5")
    await join(auth, "web-3", ["localhost", "127.0.0.1", "10.0.0.9"])


async def test_a_heartbeat_cannot_announce_another_nodes_name_or_address(
    auth: AuthServer,
) -> None:
    real = await join(auth, "web-1", ["10.0.0.5"], "10.0.0.5")
    await announced(auth, real, beat("web-1", "10.0.0.5:3022", "db1.corp"))
    await auth.put_resource(
        Node(
            metadata=Metadata(name="db-9"),
            spec=NodeSpec(addr="10.0.0.9:22", hostname="db9.corp", sub_kind="openssh"),
        ),
        "admin",
        False,
    )
    await mirrored(auth, "db-9")
    rogue = await join(auth, "evil", [])
    for hostname, taken in [
        ("10.0.0.5", 'the address of node "web-1"'),
        ("web-1", 'the name of node "web-1"'),
        ("db9.corp", 'the hostname of node "db-9"'),
    ]:
        for _ in range(2):  # beats repeat: audited once
            with pytest.raises(AccessDenied, match=f'announces hostname "{hostname}", {taken}'):
                await auth.heartbeat(rogue, beat("evil", "6.6.6.6:3022", hostname), TTL)
    with pytest.raises(NotFound):
        await auth.nodes.get("evil")
    failures = await events(auth, "heartbeat.failure")
    assert sorted(e["hostname"] for e in failures) == ["10.0.0.5", "db9.corp", "web-1"]
    assert {(e["name"], e["node"], e["addr"]) for e in failures} == {
        ("evil", "evil", "6.6.6.6:3022")
    }
    # Nodes on one machine share its hostname: that is allowed, and the hostname then
    # names neither (access/cached_access.py find_node).
    await auth.heartbeat(rogue, beat("evil", "6.6.6.6:3022", "db1.corp"), TTL)
    assert (await auth.nodes.get("evil")).spec.hostname == "db1.corp"
    # And a second node on web-1's machine, whose hostname is web-1's name (as
    # `certgate start` names a node after its host): web-1's name still wins.
    second = await join(auth, "web-1b", [])
    await auth.heartbeat(second, beat("web-1b", "10.0.0.5:3023", "web-1"), TTL)


async def kube_join(auth: AuthServer, name: str, client_addr: str) -> Identity:
    token = await auth.add_token(["kube"], timedelta(minutes=5), "admin")
    _, public_key = new_key()
    bundle = await auth.join(token.name, "kube", public_key, name, [], client_addr)
    return bundle.identity


async def test_another_roles_token_cannot_take_a_nodes_name(auth: AuthServer) -> None:
    # Every service certificate is a host certificate for its name: a kube service
    # named web-1 would have one that users' ssh accepts for node web-1.
    await join(auth, "web-1", [], "10.0.0.5")
    with pytest.raises(AccessDenied, match=r'"web-1" is held by a node that joined from 10\.0'):
        await kube_join(auth, "web-1", "6.6.6.6")
    await auth.put_resource(
        AGENTLESS.model_copy(update={"metadata": Metadata(name="db-1")}), "admin", False
    )
    with pytest.raises(AccessDenied, match='"db-1" is an agentless node an admin registered'):
        await kube_join(auth, "db-1", "10.0.0.5")
    # The kube service beside the node (`--roles node,kube`) joins from its address.
    assert (await kube_join(auth, "web-1", "10.0.0.5")).username == "web-1"
