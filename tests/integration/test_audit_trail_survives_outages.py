"""The audit trail never drops an event: not for an event type auth lacked, not while
auth is stopped or killed, not when a node is killed with `kill -9` — and the services
that write it cannot write in anyone else's name.

A cluster (auth, proxy and node-1 in one process) plus separate node processes that
users reach directly, so sessions go on while the auth process is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgau"
ROLES = f"""\
kind: role
metadata: {{name: audited}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
  options: {{forward_agent: true}}
---
kind: role
metadata: {{name: bystander}}
spec:
  allow: {{logins: [nobody-here]}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("audit"), roles="auth,proxy,node", labels="env=audit")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLES)
    yield c
    if c.process is not None and c.process.poll() is None:
        os.kill(c.process.pid, signal.SIGCONT)  # a failed test may leave it stopped
    c.stop()


@pytest.fixture(scope="module")
def alice(cluster: Cluster) -> User:
    user = cluster.add_user("alice", roles="audited")
    cluster.login(user)
    return user


def direct_ssh(user: User, port: int, *args: str, env: dict[str, str] | None = None) -> Any:
    """OpenSSH straight to a node (not through the proxy, which lives with auth)."""
    keys = user.home / "keys"
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(keys / "key"),
        "-o", f"CertificateFile={keys / 'key-cert.pub'}",
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
        "-p", str(port), *args,
    ]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def audit(cluster: Cluster, event: str, *extra: str) -> list[dict[str, Any]]:
    out = cluster.cgctl(
        "audit", "ls", f"--event={event}", "--since=2h", "--format=json", "--limit=5000", *extra
    ).stdout
    found: list[dict[str, Any]] = json.loads(out)
    return found


def matching(cluster: Cluster, event: str, field: str, value: str) -> list[dict[str, Any]]:
    """The `event` events whose `field` contains `value`."""
    return [e for e in audit(cluster, event) if value in str(e.get(field, ""))]


def node_identity(cluster: Cluster, name: str) -> IdentityFiles:
    return IdentityFiles.load(cluster.workdir / name / "identity" / "node")


def as_service(cluster: Cluster, identity: IdentityFiles) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://{cluster.auth_addr}", verify=identity.tls_context(), timeout=10
    )


def test_agent_forwarding_sessions_reach_the_audit_log(
    cluster: Cluster, alice: User, tmp_path: Path
) -> None:
    # The node emits agent_forward; auth once lacked it and refused the whole batch,
    # session.start and session.end included.
    socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL)
    try:
        eventually(socket.exists)
        marker = f"agent-{time.monotonic_ns()}"
        result = direct_ssh(
            alice, cluster.ssh_port, "-A", f"{LOGIN}@127.0.0.1", f"echo {marker}",
            env={"SSH_AUTH_SOCK": str(socket)},
        )  # fmt: skip
        assert result.stdout.strip() == marker, result.stderr
    finally:
        agent.terminate()
        agent.wait()
    start = eventually(lambda: matching(cluster, "session.start", "command", f"echo {marker}"))
    session_id = start[0]["session_id"]
    eventually(lambda: [e for e in audit(cluster, "session.end") if e["session_id"] == session_id])
    forwards = eventually(
        lambda: [e for e in audit(cluster, "agent_forward", "--user=alice") if e["allowed"]]
    )
    assert forwards[0]["code"] == "T3010I"
    assert forwards[0]["node"] == "node-1" and forwards[0]["server_kind"] == "node"


def test_sessions_while_auth_is_stopped_then_killed_are_all_logged_once_in_order(
    cluster: Cluster, alice: User
) -> None:
    _, port = cluster.start_node("node-a", "env=audit")
    eventually(lambda: direct_ssh(alice, port, f"{LOGIN}@127.0.0.1", "true").returncode == 0)
    run = f"outage-{time.monotonic_ns()}"
    commands = [f"echo {run}-{n:02d}" for n in range(50)]
    assert cluster.process is not None
    os.kill(cluster.process.pid, signal.SIGSTOP)  # auth stops answering
    try:
        for command in commands[:25]:
            result = direct_ssh(alice, port, f"{LOGIN}@127.0.0.1", command)
            assert result.returncode == 0, result.stderr
        cluster.process.kill()  # and then dies, as a crashed auth would
        cluster.process.wait()
        for command in commands[25:]:
            result = direct_ssh(alice, port, f"{LOGIN}@127.0.0.1", command)
            assert result.returncode == 0, result.stderr
    finally:
        if cluster.process.poll() is None:
            cluster.process.kill()
            cluster.process.wait()
        cluster.start()  # auth comes back (same data, same ports)

    def starts() -> list[dict[str, Any]]:
        found = audit(cluster, "session.start", "--node=node-a")
        return [e for e in found if str(e.get("command", "")).startswith(f"echo {run}")]

    eventually(lambda: len(starts()) >= 50, timeout=90)
    started = sorted(starts(), key=lambda e: e["time"])
    assert [e["command"] for e in started] == commands  # each once, in the order run
    ids = {e["session_id"] for e in started}

    def ends() -> list[dict[str, Any]]:
        found = audit(cluster, "session.end", "--node=node-a")
        return [e for e in found if e["session_id"] in ids]

    eventually(lambda: len(ends()) >= 50)
    ended = ends()
    assert sorted(e["session_id"] for e in ended) == sorted(ids)  # each once
    by_session = {e["session_id"]: e for e in ended}
    assert all(by_session[e["session_id"]]["time"] >= e["time"] for e in started)
    assert {e["server_name"] for e in started} == {"node-a"}


def test_a_node_killed_mid_session_sends_that_sessions_events_after_restart(
    cluster: Cluster, alice: User
) -> None:
    process, port = cluster.start_node("node-k", "env=audit")
    eventually(lambda: direct_ssh(alice, port, f"{LOGIN}@127.0.0.1", "true").returncode == 0)
    marker = f"killed-{time.monotonic_ns()}"
    assert cluster.process is not None
    os.kill(cluster.process.pid, signal.SIGSTOP)  # nothing can reach auth meanwhile
    keys = alice.home / "keys"
    session = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-i", str(keys / "key"),
         "-o", f"CertificateFile={keys / 'key-cert.pub'}", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-p", str(port),
         f"{LOGIN}@127.0.0.1", f"echo {marker}; sleep 120"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert session.stdout is not None
        assert session.stdout.readline().strip() == marker  # the session is running
        spool = cluster.workdir / "node-k" / "node" / "audit"
        eventually(lambda: any(marker in p.read_text() for p in spool.glob("*.jsonl")))
        process.send_signal(signal.SIGKILL)  # the node dies mid-session
        process.wait()
    finally:
        os.kill(cluster.process.pid, signal.SIGCONT)
        session.kill()
        session.communicate()
    assert not [e for e in audit(cluster, "session.start") if marker in str(e.get("command"))]

    cluster.start_node("node-k", "env=audit")  # the same data dir: its spool is there
    started = eventually(
        lambda: [e for e in audit(cluster, "session.start") if marker in str(e.get("command"))],
        timeout=30,
    )
    assert len(started) == 1 and started[0]["node"] == "node-k"


def test_a_node_cannot_forge_event_types_users_or_nodes(cluster: Cluster) -> None:
    cluster.start_node("node-f", "env=audit")
    marker = f"forged-{time.monotonic_ns()}"
    with as_service(cluster, node_identity(cluster, "node-f")) as auth:
        # What a node may write is stored, stamped with who sent it.
        answer = auth.post("/v1/events", json={"event": "exec", "fields": {"user": marker}})
        assert answer.status_code == 204
        # A node storing user.delete by admin: refused, and nothing of the call stored.
        forged = {"event": "user.delete", "fields": {"user": "admin", "name": marker}}
        answer = auth.post(
            "/v1/events",
            json={"events": [{"event": "exec", "fields": {"user": f"{marker}-2"}}, forged]},
        )
        assert answer.status_code == 403
        assert 'may not write "user.delete"' in answer.json()["message"]
        # Nor events in another node's name, nor stamps of its own choosing.
        other = {"event": "session.start", "fields": {"user": marker, "node": "node-1"}}
        assert auth.post("/v1/events", json=other).status_code == 403
        stamped = {"event": "exec", "fields": {"user": marker, "server_kind": "admin"}}
        assert auth.post("/v1/events", json=stamped).status_code == 400
        # A type auth does not know is kept, as `unknown`, not refused with its batch.
        future = {"event": "kube.frobnicate", "fields": {"user": marker, "verb": "get"}}
        assert auth.post("/v1/events", json=future).status_code == 204

    exec_events = eventually(lambda: [e for e in audit(cluster, "exec") if marker in e["user"]])
    assert [e["user"] for e in exec_events] == [marker]
    assert exec_events[0]["server_name"] == "node-f"
    assert exec_events[0]["server_kind"] == "node" and exec_events[0]["node"] == "node-f"
    assert not [e for e in audit(cluster, "user.delete") if e.get("name") == marker]
    assert not [e for e in audit(cluster, "session.start") if e.get("user") == marker]
    unknown = [e for e in audit(cluster, "unknown") if e.get("user") == marker]
    assert [(e["unknown_event"], e["verb"], e["server_name"]) for e in unknown] == [
        ("kube.frobnicate", "get", "node-f")
    ]


def test_oversized_fields_from_a_node_are_cut_and_marked(cluster: Cluster) -> None:
    cluster.start_node("node-o", "env=audit")
    marker = f"big-{time.monotonic_ns()}"
    fields = {"user": marker + "u" * 200_000, "command": "c" * 300_000, "exit_code": 0}
    with as_service(cluster, node_identity(cluster, "node-o")) as auth:
        assert auth.post("/v1/events", json={"event": "exec", "fields": fields}).status_code == 204
    (stored,) = eventually(lambda: matching(cluster, "exec", "user", marker))
    assert len(stored["user"]) == 256 and len(stored["command"]) == 2048
    assert stored["truncated"] == ["command", "user"]
    assert len(json.dumps(stored)) < 16 * 1024


def tracker(session_id: str, node: str, roles: list[str], user: str = "alice") -> dict[str, Any]:
    return {
        "metadata": {"name": session_id},
        "spec": {
            "session_kind": "shell", "user": user, "login": LOGIN, "node": node,
            "roles": roles, "started": "2026-01-01T00:00:00+00:00",
        },
    }  # fmt: skip


def test_session_trackers_only_from_the_sessions_host_with_the_users_roles(
    cluster: Cluster, alice: User
) -> None:
    cluster.start_node("node-t", "env=audit")
    own = "22222222-2222-4222-8222-222222222222"
    with as_service(cluster, node_identity(cluster, "node-t")) as auth:
        # A node tracks its own sessions with the roles the user holds...
        answer = auth.post("/v1/sessions", json={"put": [tracker(own, "node-t", ["audited"])]})
        assert answer.status_code == 204
        # ...but cannot hand a session roles its user lacks (who may join follows them),
        widened = tracker(own, "node-t", ["audited", "editor"])
        answer = auth.post("/v1/sessions", json={"put": [widened]})
        assert answer.status_code == 403
        assert "editor" in answer.json()["message"]
        # nor name a user who does not exist.
        ghost = tracker("33333333-3333-4333-8333-333333333333", "node-t", [], user="ghost")
        assert auth.post("/v1/sessions", json={"put": [ghost]}).status_code == 403
        assert auth.post("/v1/sessions", json={"delete": [own]}).status_code == 204

    # The proxy shares its host's name (node-1 here) but is not that node: it tracks
    # only agentless nodes' sessions.
    proxy = IdentityFiles.load(cluster.data_dir / "identity" / "proxy")
    assert proxy.bundle.identity.username == "node-1"
    posing = tracker("44444444-4444-4444-8444-444444444444", "node-1", ["audited"])
    with as_service(cluster, proxy) as auth:
        answer = auth.post("/v1/sessions", json={"put": [posing]})
        assert answer.status_code == 403
        assert 'may not track sessions of node "node-1"' in answer.json()["message"]
