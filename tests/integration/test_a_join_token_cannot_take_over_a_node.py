"""A join token lets a host join, not become another host.

Before: one node token, joined again as the existing node with principals `*` and
`localhost`, gave a certificate valid for every name; the rogue's heartbeats replaced
the node's address in the inventory and it could re-upload the node's recordings.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from certgate.api.identity import Identity
from certgate.errors import AccessDenied, BadParameter
from certgate.recording.asciicast import Header
from certgate.rpc.identity_files import IdentityFiles
from certgate.rpc.join import join_cluster
from tests.support.cluster import BIN, Cluster
from tests.support.net import free_port
from tests.support.wait import eventually


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("join-cluster"))
    c.start()
    yield c
    c.stop()


def new_token(cluster: Cluster, *flags: str) -> tuple[str, str]:
    out = cluster.cgctl("tokens", "add", "--type=node", "--ttl=10m", *flags).stdout
    line = next(line for line in out.splitlines() if line.startswith("certgate start"))
    words = line.split()
    return words[words.index("--token") + 1], words[words.index("--ca-pin") + 1]


def start_node(cluster: Cluster, name: str, token: str, data_dir: Path) -> subprocess.Popen[bytes]:
    log = cluster.workdir / f"{name}.log"
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [str(BIN / "certgate"), "start", "--roles", "node", "--token", token,
             "--auth-server", cluster.auth_addr, "--nodename", name, "--labels", "env=dev",
             "--data-dir", str(data_dir), "--ssh-listen", f"127.0.0.1:{free_port()}",
             "--diag-addr", "", "--heartbeat-interval", "1s"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    cluster.nodes.append(process)
    return process


def node_addr(cluster: Cluster, name: str) -> str | None:
    result = cluster.cgctl("get", f"node/{name}", "--format=json", check=False)
    if result.returncode != 0:
        return None
    return str(json.loads(result.stdout)["spec"]["addr"])


def join(cluster: Cluster, token: str, pin: str, name: str, principals: list[str]) -> IdentityFiles:
    return asyncio.run(join_cluster(cluster.auth_addr, token, pin, "node", name, principals))


def as_host(cluster: Cluster, identity: IdentityFiles) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://{cluster.auth_addr}", verify=identity.tls_context(insecure=True)
    )


def audit(cluster: Cluster, event: str) -> list[dict[str, object]]:
    out = cluster.cgctl("audit", "ls", f"--event={event}", "--format=json").stdout
    events: list[dict[str, object]] = json.loads(out)
    return events


def test_a_token_cannot_take_over_a_live_node_name(cluster: Cluster, tmp_path: Path) -> None:
    token, pin = new_token(cluster)
    web = start_node(cluster, "web-1", token, tmp_path / "web-1")
    addr = eventually(lambda: node_addr(cluster, "web-1"))

    # The same token, joined again as web-1 with principals for every name: refused.
    with pytest.raises(AccessDenied, match='the name "web-1" is held by another node'):
        join(cluster, token, pin, "web-1", ["*", "localhost"])
    # Wildcards and other hosts' names are no principals, whatever the host's name.
    with pytest.raises(BadParameter, match='invalid principal "\\*"'):
        join(cluster, token, pin, "rogue-1", ["*"])
    with pytest.raises(AccessDenied, match='principal "web-1" is the name of another node'):
        join(cluster, token, pin, "rogue-1", ["web-1"])
    # A role no host joins as: refused, and audited like every refused join.
    with pytest.raises(BadParameter, match='cannot join as "admin"'):
        asyncio.run(join_cluster(cluster.auth_addr, token, pin, "admin", "rogue-2", []))
    failures = audit(cluster, "join.failure")
    assert len(failures) >= 4
    assert any(e.get("role") == "admin" and e.get("name") == "rogue-2" for e in failures)

    # The token itself still works for a new name (what the refusals would have been).
    rogue = join(cluster, token, pin, "rogue-1", ["localhost", "127.0.0.1"])
    assert "*" not in rogue.bundle.identity.logins
    node = {
        "kind": "node",
        "version": "v1",
        "metadata": {"name": "web-1", "labels": {"env": "dev"}},
        "spec": {"addr": "127.0.0.66:22"},
    }
    with as_host(cluster, rogue) as client:
        answer = client.post("/v1/nodes/heartbeat", json={"node": node, "ttl_seconds": 30})
        assert answer.status_code == 403
        assert 'node "rogue-1" cannot announce "web-1"' in answer.json()["message"]
        own = {**node, "metadata": {"name": "rogue-1"}}
        answer = client.post("/v1/nodes/heartbeat", json={"node": own, "ttl_seconds": 30})
        assert answer.status_code == 204
    assert node_addr(cluster, "web-1") == addr

    # A restart of web-1 with its own stored identity keeps its name (the token is
    # gone by then: the stored identity is what counts).
    web.terminate()
    web.wait(timeout=20)
    cluster.cgctl("tokens", "rm", token)
    eventually(lambda: node_addr(cluster, "web-1") is None)
    start_node(cluster, "web-1", token, tmp_path / "web-1")
    eventually(lambda: node_addr(cluster, "web-1"))

    # An admin frees the name: the old identity's heartbeats stop counting, and the
    # name can be joined again.
    cluster.cgctl("rm", "node/web-1")
    token2, pin2 = new_token(cluster, "--uses=1", "--name=web-1")
    again = join(cluster, token2, pin2, "web-1", ["localhost"])
    assert again.bundle.identity.username == "web-1"
    log = cluster.workdir / "web-1.log"
    eventually(lambda: "no longer holds the name" in log.read_text())
    eventually(lambda: node_addr(cluster, "web-1") is None)


AGENTLESS = """\
kind: node
metadata: {name: agentless-9, labels: {env: dev}}
spec: {sub_kind: openssh, addr: "10.9.9.9:22", hostname: db9.example}
"""


def node_spec(cluster: Cluster, name: str) -> dict[str, object] | None:
    result = cluster.cgctl("get", f"node/{name}", "--format=json", check=False)
    if result.returncode != 0:
        return None
    spec: dict[str, object] = json.loads(result.stdout)["spec"]
    return spec


def test_a_token_cannot_take_an_agentless_node_or_another_nodes_names(cluster: Cluster) -> None:
    cluster.cgctl("create", "-f", "-", input=AGENTLESS)
    registered = node_spec(cluster, "agentless-9")
    token, pin = new_token(cluster)
    # Its name, its address, its hostname: none is the rogue's to take.
    with pytest.raises(AccessDenied, match='"agentless-9" is an agentless node an admin regis'):
        join(cluster, token, pin, "agentless-9", ["agentless-9"])
    with pytest.raises(AccessDenied, match=r'principal "10\.9\.9\.9" is the address of node "a'):
        join(cluster, token, pin, "rogue-9", ["10.9.9.9"])
    with pytest.raises(AccessDenied, match=r'"db9\.example" is the hostname of node "agentless-9"'):
        join(cluster, token, pin, "db9.example", [])
    assert node_spec(cluster, "agentless-9") == registered
    failures = audit(cluster, "join.failure")
    assert {"agentless-9", "rogue-9", "db9.example"} <= {e.get("name") for e in failures}

    # A rogue that joined under a name of its own cannot announce another node's name
    # or address as its hostname, to draw `cgsh ssh agentless-9` or its address.
    rogue = join(cluster, token, pin, "rogue-9", ["localhost", "127.0.0.1"])
    taken = {
        "agentless-9": 'hostname "agentless-9", the name of node "agentless-9"',
        "10.9.9.9": 'hostname "10.9.9.9", the address of node "agentless-9"',
    }
    with as_host(cluster, rogue) as client:
        for hostname, message in taken.items():
            node = {
                "kind": "node",
                "version": "v1",
                "metadata": {"name": "rogue-9", "labels": {"env": "dev"}},
                "spec": {"addr": "127.0.0.66:22", "hostname": hostname},
            }
            answer = client.post("/v1/nodes/heartbeat", json={"node": node, "ttl_seconds": 30})
            assert answer.status_code == 403
            assert message in answer.json()["message"]
    assert node_addr(cluster, "rogue-9") is None
    refused = [e for e in audit(cluster, "heartbeat.failure") if e.get("node") == "rogue-9"]
    assert sorted(e["hostname"] for e in refused) == ["10.9.9.9", "agentless-9"]


def test_tokens_limited_by_uses_and_bound_to_a_name(cluster: Cluster) -> None:
    token, pin = new_token(cluster, "--uses=1", "--name=bound-1")
    with pytest.raises(AccessDenied, match='this join token is for "bound-1" only'):
        join(cluster, token, pin, "other-1", [])
    assert join(cluster, token, pin, "bound-1", []).bundle.identity.username == "bound-1"
    with pytest.raises(AccessDenied, match="unknown or expired"):
        join(cluster, token, pin, "bound-1", [])
    listed = cluster.cgctl("tokens", "ls").stdout
    assert token not in listed

    two, pin = new_token(cluster, "--uses=2")
    join(cluster, two, pin, "counted-1", [])
    assert " 1 " in next(line for line in cluster.cgctl("tokens", "ls").stdout.splitlines()
                         if two in line)  # fmt: skip
    join(cluster, two, pin, "counted-2", [])
    with pytest.raises(AccessDenied, match="unknown or expired"):
        join(cluster, two, pin, "counted-3", [])


def announce(client: httpx.Client, session: str, node: str) -> None:
    """What a node's recording hook sends as it opens a recording: the session is its."""
    fields = {"session_id": session, "user": "alice", "login": "alice", "kind": "shell"}
    event = {"event": "session.recording.start", "fields": {**fields, "node": node}}
    answer = client.post("/v1/events", json={"events": [event]})
    assert answer.status_code == 204, answer.text


def test_a_stored_recording_is_write_once(cluster: Cluster) -> None:
    token, pin = new_token(cluster)
    node = join(cluster, token, pin, "recorder-1", [])
    session = str(uuid.uuid4())
    began = time.time()

    def cast(text: str, node: str = "recorder-1") -> bytes:
        header = Header(
            width=80, height=24, timestamp=began, session_id=session,
            user="alice", login="alice", node=node,
        )  # fmt: skip
        return (json.dumps(header.to_dict()) + "\n" + json.dumps([0.5, "o", text]) + "\n").encode()

    with as_host(cluster, node) as client:
        announce(client, session, "recorder-1")
        first = client.put(f"/v1/recordings/{session}", content=cast("rm -rf /\r\n"))
        assert first.status_code == 200, first.text
        retry = client.put(f"/v1/recordings/{session}", content=cast("rm -rf /\r\n"))
        assert retry.status_code == 200  # the same file again: a retry
        forged = client.put(f"/v1/recordings/{session}", content=cast("ls\r\n"))
        assert forged.status_code == 409
        assert "write-once" in forged.json()["message"]
    # Another node's recording of the same session id, even once it announced the
    # session too: not its session. Refused, and audited.
    other, pin = new_token(cluster)
    with as_host(cluster, join(cluster, other, pin, "recorder-2", [])) as client:
        announce(client, session, "recorder-2")
        taken = client.put(f"/v1/recordings/{session}", content=cast("ls\r\n", "recorder-2"))
        assert taken.status_code == 403, taken.text
        assert "not hosted by recorder-2" in taken.json()["message"]
    failures = json.loads(
        cluster.cgctl("audit", "ls", "--event=session.upload.failure", "--format=json").stdout
    )
    assert [e["server"] for e in failures if e["session_id"] == session] == ["recorder-1"]
    rejected = json.loads(
        cluster.cgctl("audit", "ls", "--event=session.rejected", "--format=json").stdout
    )
    assert any(e["user"] == "recorder-2" and session in e["path"] for e in rejected)
    admin = IdentityFiles.load(cluster.data_dir / "admin")
    with as_host(cluster, admin) as client:
        stored = client.get(f"/v1/recordings/{session}/cast").content
    assert b"rm -rf /" in stored


def test_a_proxy_identity_cannot_announce_a_node(cluster: Cluster) -> None:
    proxy = IdentityFiles.load(cluster.data_dir / "identity" / "proxy")
    assert Identity.from_dict(proxy.bundle.identity.to_dict()).is_service("Proxy")
    node = {
        "kind": "node",
        "version": "v1",
        "metadata": {"name": proxy.bundle.identity.username},
        "spec": {"addr": "127.0.0.1:22"},
    }
    with as_host(cluster, proxy) as client:
        answer = client.post("/v1/nodes/heartbeat", json={"node": node, "ttl_seconds": 30})
    assert answer.status_code == 403
    assert "is not a node" in answer.json()["message"]


def test_no_service_certificate_is_valid_for_a_nodes_name(cluster: Cluster) -> None:
    node_token, pin = new_token(cluster)
    join(cluster, node_token, pin, "victim-1", [])
    out = cluster.cgctl("tokens", "add", "--type=proxy", "--ttl=10m").stdout
    proxy_token = next(w for w in out.split() if len(w) == 32)

    def join_proxy(principals: list[str]) -> IdentityFiles:
        return asyncio.run(
            join_cluster(cluster.auth_addr, proxy_token, pin, "proxy", "proxy-2", principals)
        )

    with pytest.raises(AccessDenied, match='principal "victim-1" is the name of another node'):
        join_proxy(["victim-1"])
    suffixed = f"victim-1.{cluster.cluster_name}"
    with pytest.raises(AccessDenied, match="is the name of another node"):
        join_proxy([suffixed])
    assert join_proxy(["proxy-2.example"]).bundle.identity.username == "proxy-2"


def test_a_truncated_recording_is_stored_and_listed_as_such(cluster: Cluster) -> None:
    """What a node sends of a session that printed more than a recording holds: the
    start, marked truncated (its node keeps the rest); auth stores it as incomplete."""
    token, pin = new_token(cluster)
    node = join(cluster, token, pin, "recorder-3", [])
    session = str(uuid.uuid4())
    header = Header(
        width=80, height=24, timestamp=time.time(), session_id=session,
        user="alice", login="alice", node="recorder-3",
    )  # fmt: skip
    body = (json.dumps(header.to_dict()) + "\n" + json.dumps([0.5, "o", "x" * 100]) + "\n").encode()
    with as_host(cluster, node) as client:
        announce(client, session, "recorder-3")
        stored = client.put(f"/v1/recordings/{session}", params={"truncated": "1"}, content=body)
        assert stored.status_code == 200, stored.text
        assert stored.json()["truncated"] is True and stored.json()["incomplete"] is True
    uploads = json.loads(
        cluster.cgctl("audit", "ls", "--event=session.upload", "--format=json").stdout
    )
    assert [e["recording_truncated"] for e in uploads if e["session_id"] == session] == [True]
    auditor = cluster.add_user("trunc-auditor", roles="auditor")
    cluster.login(auditor)
    listed = cluster.cgsh(auditor, "recordings", "ls").stdout
    row = next(line for line in listed.splitlines() if line.startswith(session))
    assert "(truncated: its node keeps the rest)" in row
