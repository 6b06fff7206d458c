"""Heartbeats check who holds the node's name from memory (services/host_names.py), not
the store: a node removed with `cgctl rm node/NAME` must still be refused at once, and a
removal through another auth process on the same store within its watch latency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certgate.api.identity import Identity
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.auth.server import AuthServer
from certgate.backend.registry import open_backend, open_event_store
from certgate.clock import FakeClock
from certgate.errors import AccessDenied, NotFound
from certgate.rpc.identity_files import new_key
from certgate.services.audit import AuditLog

TTL = timedelta(seconds=30)


@pytest.fixture
def clock() -> FakeClock:
    # Certificates say when they were issued in whole seconds: a test that joins a name
    # twice moves the clock on in between, as the world would.
    return FakeClock(datetime.now(UTC))


@pytest.fixture
async def auths(tmp_path: Path, clock: FakeClock) -> AsyncIterator[list[AuthServer]]:
    """Two auth servers on one store, as two auth processes (or workers) run."""
    opened: list[AuthServer] = []
    closers = []
    for index in range(2):
        backend = await open_backend({}, tmp_path)
        events = await open_event_store({}, tmp_path)
        audit = AuditLog(events, tmp_path / f"log{index}" / "events.log")
        auth = AuthServer(backend, audit, clock, "test", "proxy:3080", "auth:3025")
        await auth.start()
        opened.append(auth)
        closers.append((auth, audit, events, backend))
    yield opened
    for auth, audit, events, backend in closers:
        await auth.close()
        await audit.close()
        await events.close()
        await backend.close()


async def join(auth: AuthServer, name: str) -> Identity:
    token = await auth.add_token(["node"], timedelta(minutes=5), "admin")
    _, public_key = new_key()
    bundle = await auth.join(token.name, "node", public_key, name, [name], "127.0.0.1")
    return bundle.identity


def beat(name: str) -> Node:
    return Node(
        metadata=Metadata(name=name, labels={"env": "test"}),
        spec=NodeSpec(addr="127.0.0.1:3022", hostname=name),
    )


async def refused(auth: AuthServer, identity: Identity) -> bool:
    try:
        await auth.heartbeat(identity, beat(identity.username), TTL)
    except AccessDenied:
        return True
    return False


async def test_a_removed_node_cannot_heartbeat_from_the_cache(auths: list[AuthServer]) -> None:
    auth = auths[0]
    identity = await join(auth, "web-1")
    for _ in range(3):  # beats that the name cache now answers
        await auth.heartbeat(identity, beat("web-1"), TTL)
    assert (await auth.nodes.get("web-1")).spec.hostname == "web-1"
    await auth.delete_resource("node", "web-1", "admin")
    assert await refused(auth, identity)
    with pytest.raises(NotFound):
        await auth.nodes.get("web-1")


async def test_a_node_removed_through_another_auth_is_refused_here(
    auths: list[AuthServer],
) -> None:
    here, there = auths
    identity = await join(here, "web-2")
    await here.heartbeat(identity, beat("web-2"), TTL)
    await here.heartbeat(identity, beat("web-2"), TTL)  # answered from the cache
    await there.delete_resource("node", "web-2", "admin")
    assert await refused_soon(here, identity)


async def test_a_rejoined_name_refuses_the_old_identity_and_takes_the_new(
    auths: list[AuthServer], clock: FakeClock
) -> None:
    here, there = auths
    old = await join(here, "web-3")
    await here.heartbeat(old, beat("web-3"), TTL)
    await here.heartbeat(old, beat("web-3"), TTL)  # answered from the cache
    await there.delete_resource("node", "web-3", "admin")
    clock.advance(timedelta(seconds=2))
    new = await join(there, "web-3")
    assert await refused_soon(here, old)
    await here.heartbeat(new, beat("web-3"), TTL)  # the new holder is accepted at once


async def refused_soon(auth: AuthServer, identity: Identity, timeout: float = 10.0) -> bool:
    """Refused within the other process's watch latency (polled, then checked again)."""
    deadline = time.monotonic() + timeout
    while not await refused(auth, identity):
        assert time.monotonic() < deadline, "the removed identity kept heartbeating"
        await asyncio.sleep(0.01)
    return await refused(auth, identity)


async def listed(auth: AuthServer) -> list[str]:
    admin = Identity(
        username="alice", roles=("access",), kind="user", expires=auth.clock.now() + TTL
    )
    return [n.name for n in await auth.nodes_for(admin)]


async def listed_soon(auth: AuthServer, names: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := await listed(auth)) != names:
        assert time.monotonic() < deadline, f"listed {found}, not {names}"
        await asyncio.sleep(0.01)


async def test_cgsh_ls_follows_beats_removals_and_expiry_through_any_auth(
    auths: list[AuthServer], clock: FakeClock
) -> None:
    # `cgsh ls` is answered from auth's mirror of the nodes (services/prefix_mirror.py).
    here, there = auths
    assert here.node_mirror.current
    first, second = await join(there, "db-1"), await join(there, "db-2")
    await there.heartbeat(first, beat("db-1"), TTL)
    await there.heartbeat(second, beat("db-2"), timedelta(seconds=90))
    await listed_soon(here, ["db-1", "db-2"])  # beats through the other auth show here
    await there.delete_resource("node", "db-2", "admin")
    await listed_soon(here, ["db-1"])
    clock.advance(TTL + timedelta(seconds=1))  # db-1 stopped beating: gone at its expiry
    assert await listed(here) == []
