"""A rogue host with any kube join token cannot take over a cluster another kube service
serves: the proxy sends every kubectl call for a cluster to the service its entry names.
Before, any kube service's heartbeat overwrote the entry (its address and service), and
users' kubectl traffic for "prod" went to the rogue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from certgate.api.identity import Identity
from certgate.api.kube_cluster import KubeCluster, KubeClusterSpec
from certgate.api.meta import Metadata
from certgate.auth.server import AuthServer
from certgate.errors import AccessDenied
from certgate.rpc.identity_files import new_key
from tests.support.auth_server import started_auth_server

TTL = timedelta(seconds=30)


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with started_auth_server(tmp_path) as server:
        yield server


async def kube_service(auth: AuthServer, name: str, client_addr: str) -> Identity:
    token = await auth.add_token(["kube"], timedelta(minutes=5), "admin")
    _, public_key = new_key()
    bundle = await auth.join(token.name, "kube", public_key, name, [name], client_addr)
    return bundle.identity


def cluster(addr: str) -> KubeCluster:
    return KubeCluster(
        metadata=Metadata(name="prod", labels={"env": "prod"}), spec=KubeClusterSpec(addr=addr)
    )


async def test_a_second_kube_service_cannot_announce_a_served_cluster(auth: AuthServer) -> None:
    real = await kube_service(auth, "kube-1", "10.0.0.7")
    rogue = await kube_service(auth, "kube-evil", "6.6.6.6")
    await auth.kube_heartbeat(real, cluster("10.0.0.7:3027"), TTL)

    for _ in range(3):  # it beats on every interval: one event says it
        with pytest.raises(AccessDenied, match='"prod" is served by kube service "kube-1"'):
            await auth.kube_heartbeat(rogue, cluster("6.6.6.6:3027"), TTL)
    held = await auth.kube_clusters.get("prod")
    assert (held.spec.service, held.spec.addr) == ("kube-1", "10.0.0.7:3027")
    assert await auth.serves_kube_cluster("kube-1", "prod")
    assert not await auth.serves_kube_cluster("kube-evil", "prod")
    refused, _ = await auth.audit.search(event_types=["heartbeat.failure"])
    assert [(e["name"], e["kube_cluster"]) for e in refused] == [("kube-evil", "prod")]

    await auth.kube_heartbeat(real, cluster("10.0.0.8:3027"), TTL)  # its own: still its
    assert (await auth.kube_clusters.get("prod")).spec.addr == "10.0.0.8:3027"


async def test_once_the_first_stops_another_takes_the_name_over(auth: AuthServer) -> None:
    first = await kube_service(auth, "kube-1", "10.0.0.7")
    standby = await kube_service(auth, "kube-2", "10.0.0.9")
    await auth.kube_heartbeat(first, cluster("10.0.0.7:3027"), timedelta(seconds=1))
    with pytest.raises(AccessDenied):
        await auth.kube_heartbeat(standby, cluster("10.0.0.9:3027"), TTL)
    await asyncio.sleep(1.2)  # kube-1 stops beating: its entry expires
    await auth.kube_heartbeat(standby, cluster("10.0.0.9:3027"), TTL)
    assert (await auth.kube_clusters.get("prod")).spec.service == "kube-2"
