"""A node's heartbeats go up its watch socket: one connection to auth per node, not two.

Auth checks every beat that comes that way as it checks POST /v1/nodes/heartbeat: a node
announcing another name, a node that was removed, a user, a malformed or oversized
message each get a refusal and change nothing in the inventory.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certgate.errors import AccessDenied
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from certgate.rpc.join import join_cluster
from certgate.rpc.watcher import ResourceView
from tests.support.cluster import Cluster
from tests.support.wait import eventually, eventually_async, tls_closed

KINDS = ["role", "lock", "cert_authority"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("beats-cluster"))
    c.start()
    yield c
    c.stop()


def established_to(pid: int, port: int) -> int:
    """TCP connections process `pid` holds open to local port `port` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in inodes:
                count += 1
    return count


def listed_nodes(cluster: Cluster) -> dict[str, Any]:
    out = cluster.cgctl("get", "node", "--format=json").stdout
    return {n["metadata"]["name"]: n for n in json.loads(out)}


def test_a_node_holds_one_connection_to_auth_and_stays_listed(cluster: Cluster) -> None:
    process, _ = cluster.start_node("one-conn", "env=beats")
    eventually(lambda: "one-conn" in listed_nodes(cluster), timeout=30)
    first = listed_nodes(cluster)["one-conn"]["metadata"]["expires"]
    # Beats every second (the cluster's --heartbeat-interval): the expiry moves on...
    eventually(lambda: listed_nodes(cluster)["one-conn"]["metadata"]["expires"] != first, 30)
    # ...while the node holds one connection to auth: the watch, carrying the beats.
    assert established_to(process.pid, cluster.auth_port) == 1
    log = (cluster.workdir / "one-conn.log").read_text()
    assert "heartbeat failed" not in log


def _join(cluster: Cluster, name: str) -> IdentityFiles:
    out = cluster.cgctl("tokens", "add", "--type=node", "--ttl=10m").stdout
    words = next(line for line in out.splitlines() if line.startswith("certgate start")).split()
    token, pin = words[words.index("--token") + 1], words[words.index("--ca-pin") + 1]
    return asyncio.run(join_cluster(cluster.auth_addr, token, pin, "node", name, [name]))


def _beat(name: str) -> dict[str, Any]:
    node = {
        "kind": "node",
        "version": "v1",
        "metadata": {"name": name, "labels": {"env": "beats"}},
        "spec": {"addr": "127.0.0.1:1", "hostname": name},
    }
    return {"type": "heartbeat", "node": node, "ttl_seconds": 30}


def _beat_bytes(name: str, label: str) -> bytes:
    """A heartbeat whose env label is the raw JSON text `label`."""
    body = json.dumps({**_beat(name), "id": 1}).replace('"beats"', "LABEL")
    return body.replace("LABEL", label).encode()


@pytest.fixture
async def view_of(cluster: Cluster) -> AsyncIterator[Any]:
    opened: list[tuple[ResourceView, AsyncAuthClient]] = []

    async def open_view(identity: IdentityFiles) -> ResourceView:
        client = AsyncAuthClient(f"https://{cluster.auth_addr}", identity.tls_context())
        view = ResourceView(client, KINDS, carries_requests=True, ping_every=1.0)
        opened.append((view, client))
        view.start()
        await view.wait_ready(timeout=30)
        await eventually_async(lambda: view.carries_requests)
        return view

    yield open_view
    for view, client in opened:
        await view.close()
        await client.close()
    await tls_closed()


async def test_a_node_cannot_announce_another_name_over_its_watch(
    cluster: Cluster, view_of: Any
) -> None:
    own = await asyncio.to_thread(_join, cluster, "honest-1")
    view = await view_of(own)
    await view.ask(_beat("honest-1"), timeout=15)
    assert "honest-1" in await asyncio.to_thread(listed_nodes, cluster)

    with pytest.raises(AccessDenied, match='node "honest-1" cannot announce "victim-9"'):
        await view.ask(_beat("victim-9"), timeout=15)
    assert "victim-9" not in await asyncio.to_thread(listed_nodes, cluster)
    # The refusal is an answer: the socket and the watch go on.
    assert view.carries_requests
    await view.ask(_beat("honest-1"), timeout=15)


async def test_a_removed_node_is_refused_over_its_open_watch(
    cluster: Cluster, view_of: Any
) -> None:
    identity = await asyncio.to_thread(_join, cluster, "removed-1")
    view = await view_of(identity)
    await view.ask(_beat("removed-1"), timeout=15)
    await asyncio.to_thread(cluster.cgctl, "rm", "node/removed-1")
    with pytest.raises(AccessDenied, match='no longer holds the name "removed-1"'):
        await view.ask(_beat("removed-1"), timeout=15)
    assert "removed-1" not in await asyncio.to_thread(listed_nodes, cluster)


async def test_a_user_cannot_heartbeat_over_their_watch(cluster: Cluster, view_of: Any) -> None:
    admin = IdentityFiles.load(cluster.data_dir / "admin")
    view = await view_of(admin)
    with pytest.raises(AccessDenied):
        await view.ask(_beat("admin-node"), timeout=15)
    assert "admin-node" not in await asyncio.to_thread(listed_nodes, cluster)


@pytest.mark.parametrize(
    "payload, codes",
    [
        (b"not json", {1003}),
        (json.dumps({"type": "delete_everything", "id": 1}).encode(), {1003}),
        (json.dumps({"type": "heartbeat"}).encode(), {1003}),  # no id to answer to
        # Over the 1 MiB a POST body may be: dropped unread; a close frame saying so
        # (1009) may or may not get out before the connection goes (1006).
        (json.dumps({**_beat("big-1"), "id": 1, "pad": "x" * 1_100_000}).encode(), {1006, 1009}),
        # What the store cannot hold, read as every request body is (api/json_input.py).
        (_beat_bytes("big-1", label='"\\ud800"'), {1003}),
        (b'{"type": "heartbeat", "id": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", {1003}),
        (_beat_bytes("big-1", label="NaN"), {1003}),
    ],
    ids=["not-json", "unknown-request", "no-id", "oversized", "surrogate", "deep", "nan"],
)
async def test_a_malformed_request_ends_the_socket_and_changes_nothing(
    cluster: Cluster, payload: bytes, codes: set[int]
) -> None:
    identity = await asyncio.to_thread(_join, cluster, f"bad-{min(codes)}-{len(payload)}")
    url = f"https://{cluster.auth_addr}/v1/watch"
    connector = aiohttp.TCPConnector(ssl=identity.tls_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(url, params={"kinds": "lock"}) as socket:
            snapshot = await socket.receive(timeout=15)
            assert json.loads(snapshot.data)["type"] == "snapshot"
            await socket.send_bytes(payload)
            while (message := await socket.receive(timeout=15)).type is aiohttp.WSMsgType.BINARY:
                assert json.loads(message.data.splitlines()[0])["type"] == "ping"
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert socket.close_code in codes
    await tls_closed()
    assert "big-1" not in await asyncio.to_thread(listed_nodes, cluster)
    # Auth goes on serving watches.
    admin = IdentityFiles.load(cluster.data_dir / "admin")
    client = AsyncAuthClient(f"https://{cluster.auth_addr}", admin.tls_context())
    view = ResourceView(client, ["lock"], carries_requests=True)
    view.start()
    try:
        await view.wait_ready(timeout=30)
    finally:
        await view.close()
        await client.close()
        await tls_closed()


def test_after_an_auth_restart_the_node_comes_back_on_one_connection(tmp_path: Path) -> None:
    # 10,000 nodes coming back to a restarted auth: a beat that went as a call while the
    # watch was reconnecting would open a second connection per node and double auth's
    # handshakes. It waits for the socket (up to half an interval) instead.
    cluster = Cluster(tmp_path)
    cluster.start()
    try:
        # 30 s beats: a beat waits up to 15 s for the socket, past the watch's reconnect
        # backoff (at most 10 s) on a loaded machine.
        node, _ = cluster.start_node("comeback", "env=beats", "--heartbeat-interval", "30s")
        eventually(lambda: "comeback" in listed_nodes(cluster), timeout=30)
        assert cluster.process is not None
        cluster.process.terminate()
        cluster.process.wait(timeout=20)
        cluster.start()
        before = listed_nodes(cluster)["comeback"]["metadata"]["expires"]
        # Back and beating: its first beat after the restart moves the expiry on...
        eventually(lambda: listed_nodes(cluster)["comeback"]["metadata"]["expires"] != before, 40)
        # ...on the one connection of its watch.
        assert established_to(node.pid, cluster.auth_port) == 1
    finally:
        cluster.stop()
