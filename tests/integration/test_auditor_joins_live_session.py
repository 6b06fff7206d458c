"""Live sessions are listed and can be joined by policy (issue 4, part 5).

Real processes: `certgate start` with auth, proxy and node; the session's owner types
into a real terminal (pexpect, stock OpenSSH through the proxy); joiners run
`cgsh join` in real terminals of their own. An observer sees the live output and cannot
type; a peer's keystrokes reach the shell; everyone sees who joined; joins are audited;
a joiner without the policy is refused, also when it skips cgsh and asks the node itself.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pexpect
import pytest

from certgate.api.session_tracker import join_login
from certgate.client.cluster import connect_profile
from certgate.errors import AccessDenied
from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import BIN, Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgjoin"
ROLES = f"""\
kind: role
metadata: {{name: dev}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
---
kind: role
metadata: {{name: watcher}}
spec:
  allow:
    join_sessions: [{{roles: [dev], kinds: [ssh], modes: [observer]}}]
---
kind: role
metadata: {{name: pair}}
spec:
  allow:
    join_sessions: [{{roles: ["d*"], modes: [peer]}}]
---
kind: role
metadata: {{name: nobody}}
spec: {{}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("join"), roles="auth,proxy,node")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLES)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def people(cluster: Cluster) -> dict[str, User]:
    users = {}
    for name, roles in (("alice", "dev"), ("walt", "watcher"), ("pat", "pair"), ("eve", "nobody")):
        users[name] = cluster.add_user(name, roles=roles)
        cluster.login(users[name])
    return users


def owner_shell(cluster: Cluster, user: User, node: str = "node-1") -> pexpect.spawn:
    config = user.home / f"{node}_config"
    config.write_text(eventually(lambda: _config_with_node(cluster, user, node)))
    child = pexpect.spawn(
        "ssh", ["-F", str(config), "-tt", f"{LOGIN}@{node}"], timeout=15, encoding="utf-8"
    )
    child.sendline("echo READY-$((40+2))")
    child.expect("READY-42")
    return child


def _config_with_node(cluster: Cluster, user: User, node: str) -> str:
    text = cluster.cgsh(user, "config").stdout
    return text if node in text else ""


def join(cluster: Cluster, user: User, session_id: str, *extra: str) -> pexpect.spawn:
    return pexpect.spawn(
        str(BIN / "cgsh"),
        ["join", session_id, *extra],
        env={**os.environ, "CERTGATE_HOME": str(user.home), "TERM": "xterm"},
        timeout=15,
        encoding="utf-8",
    )


def sessions(cluster: Cluster, user: User) -> list[dict[str, Any]]:
    out = cluster.cgsh(user, "sessions", "ls", "--format=json").stdout
    found: list[dict[str, Any]] = json.loads(out)
    return found


def audit(cluster: Cluster, event: str) -> list[dict[str, Any]]:
    out = cluster.cgctl("audit", "ls", f"--event={event}", "--format=json", "--limit=500").stdout
    found: list[dict[str, Any]] = json.loads(out)
    return found


def test_observers_watch_peers_type_and_everyone_sees_who_joined(
    cluster: Cluster, people: dict[str, User]
) -> None:
    alice, walt, pat, eve = (people[n] for n in ("alice", "walt", "pat", "eve"))
    shell = owner_shell(cluster, alice)
    shown = io.StringIO()  # everything the owner's terminal shows from here on
    shell.logfile_read = shown

    # The live session is listed for its owner and for those who may join it.
    listed = eventually(lambda: [s for s in sessions(cluster, walt) if s["user"] == "alice"])
    assert len(listed) == 1
    session = listed[0]
    assert (session["login"], session["node"], session["join_modes"]) == (
        LOGIN,
        "node-1",
        ["observer"],
    )
    session_id = session["id"]
    assert [s["id"] for s in sessions(cluster, alice)] == [session_id]
    assert sessions(cluster, eve) == []
    text = cluster.cgsh(walt, "sessions", "ls").stdout
    assert session_id in text and "alice" in text and "observer" in text

    # An observer joins: everyone sees it, the observer sees live output...
    observer = join(cluster, walt, session_id)
    observer.expect(f"joined session {session_id} as observer")
    shell.expect_exact("walt joined (observer)")
    observer.expect_exact("walt joined (observer)")
    shell.sendline("echo LIVE-$((1+2))")
    observer.expect("LIVE-3")

    # ...and cannot type: nothing it sends reaches the shell (checked below, once a peer's
    # keystrokes, sent later, have been seen to arrive).
    observer.send("echo OBSERVER-$((2+2))\r")
    shell.sendline("echo AFTER-$((3+3))")
    shell.expect("AFTER-6")
    observer.expect("AFTER-6")

    # A peer types into the session; owner and observer see the result.
    peer = join(cluster, pat, session_id, "--mode=peer")
    peer.expect(f"joined session {session_id} as peer")
    shell.expect_exact("pat joined (peer)")
    peer.send("echo PEER-$((5+5))\r")
    shell.expect("PEER-10")
    observer.expect("PEER-10")
    peer.expect("PEER-10")
    assert "PEER-10" in shown.getvalue()  # the observation that would show OBSERVER-4
    assert "OBSERVER-4" not in shown.getvalue()

    # The tracker lists who is in the session.
    def both_listed() -> bool:
        found = [s for s in sessions(cluster, alice) if s["id"] == session_id]
        joined = {(p["user"], p["mode"]) for p in found[0]["participants"]} if found else set()
        return joined == {("walt", "observer"), ("pat", "peer")}

    eventually(both_listed)

    # Ctrl-C is how an observer leaves; the others see it go.
    observer.send("\x03")
    observer.expect("you left the session")
    observer.expect(pexpect.EOF)
    shell.expect_exact("walt left")

    # The session ends: its joiners are told and let go, and it leaves the list.
    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    peer.expect("the session has ended")
    peer.expect(pexpect.EOF)
    eventually(lambda: not [s for s in sessions(cluster, walt) if s["id"] == session_id])

    # Audit events reach auth up to ~1 s after they happen (docs/audit.md).
    def of_session(event: str, count: int) -> list[dict[str, Any]] | None:
        found = [e for e in audit(cluster, event) if e.get("session_id") == session_id]
        return found if len(found) >= count else None

    joins = eventually(lambda: of_session("session.join", 2))
    assert {(e["user"], e["mode"], e["session_user"]) for e in joins} == {
        ("walt", "observer", "alice"),
        ("pat", "peer", "alice"),
    }
    assert all(e["node"] == "node-1" for e in joins)
    leaves = eventually(lambda: of_session("session.leave", 2))
    assert {e["user"] for e in leaves} == {"walt", "pat"}


def test_joining_without_the_policy_is_refused(cluster: Cluster, people: dict[str, User]) -> None:
    alice, walt, eve = people["alice"], people["walt"], people["eve"]
    shell = owner_shell(cluster, alice)
    session_id = eventually(lambda: [s["id"] for s in sessions(cluster, alice)])[0]

    # cgsh says why, in one line, before dialling anything.
    peer = cluster.cgsh(walt, "join", session_id, "--mode=peer", check=False)
    assert peer.returncode == 3
    assert peer.stderr.strip() == (
        "error: access denied: your roles do not allow joining alice's session as peer "
        "(you may join as observer)"
    )
    hidden = cluster.cgsh(eve, "join", session_id, check=False)
    assert hidden.returncode != 0
    assert f'session "{session_id}" not found' in hidden.stderr
    # A prefix eve cannot see reads the same as the whole id does.
    short = cluster.cgsh(eve, "join", session_id[:8], check=False)
    assert short.returncode == 4
    assert short.stderr.strip() == (
        f'error: session "{session_id[:8]}" not found: it has ended, or you cannot see it'
    )
    bogus = cluster.cgsh(walt, "join", "../../etc/passwd", check=False)
    assert bogus.returncode == 4
    assert bogus.stderr.strip() == (
        'error: session "../../etc/passwd" not found: session ids are UUIDs'
    )

    # Skipping cgsh and asking the node directly with stock OpenSSH changes nothing.
    def stock_join(user: User, login: str) -> subprocess.CompletedProcess[str]:
        # `cgsh config` lists only nodes the roles reach; NODE.<cluster> goes through the
        # proxy all the same.
        config = user.home / "join_config"
        config.write_text(cluster.cgsh(user, "config").stdout)
        return subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-tt", "-l", login,
             f"node-1.{cluster.cluster_name}"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    for login in (
        join_login("peer", session_id),  # a mode the roles do not give
        join_login("observer", "00000000-0000-4000-8000-000000000000"),  # no such session
        join_login("moderator", session_id),  # not a mode
    ):
        result = stock_join(walt, login)
        assert result.returncode == 255, result
        assert "Permission denied" in result.stderr
    # Eve cannot even reach the node: no node access, and nothing she may join there.
    result = stock_join(eve, join_login("observer", session_id))
    assert result.returncode == 255
    assert "not found" in result.stderr
    eventually(
        lambda: any(
            "do not allow joining alice's sessions as peer" in e["reason"]
            for e in audit(cluster, "session.rejected")
            if e.get("user") == "walt" and session_id in e.get("login", "")
        )
    )
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_locking_a_joiner_ends_its_view(cluster: Cluster, people: dict[str, User]) -> None:
    alice, walt = people["alice"], people["walt"]
    shell = owner_shell(cluster, alice)
    session_id = eventually(lambda: [s["id"] for s in sessions(cluster, alice)])[0]
    observer = join(cluster, walt, session_id)
    shell.expect_exact("walt joined (observer)")

    out = cluster.cgctl("lock", "--user=walt", "--message=no more watching").stdout
    name = out.split("'")[1]
    observer.expect("access denied: locked: no more watching")
    observer.expect(pexpect.EOF)
    shell.expect_exact("walt left")
    # The owner's session goes on.
    shell.sendline("echo STILL-$((4+4))")
    shell.expect("STILL-8")
    cluster.cgctl("rm", f"lock/{name}")
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_an_observer_of_a_locked_session_sees_the_lock_message(
    cluster: Cluster, people: dict[str, User]
) -> None:
    alice, walt = people["alice"], people["walt"]
    shell = owner_shell(cluster, alice)
    session_id = eventually(lambda: [s["id"] for s in sessions(cluster, alice)])[0]
    observer = join(cluster, walt, session_id)
    shell.expect_exact("walt joined (observer)")

    out = cluster.cgctl("lock", "--user=alice", "--message=owner under review").stdout
    name = out.split("'")[1]
    shell.expect("access denied: locked: owner under review")
    # The observer reads why, not only that the session ended.
    observer.expect("access denied: locked: owner under review")
    observer.expect("the session has ended")
    observer.expect(pexpect.EOF)
    cluster.cgctl("rm", f"lock/{name}")
    # The recording keeps the reason too.
    cluster.login(alice)
    cast = eventually(
        lambda: (
            (r := cluster.cgsh(alice, "play", session_id, "--format=json", check=False)).returncode
            == 0
            and r.stdout
        )
    )
    assert "owner under review" in cast


def test_trackers_cannot_be_forged_or_removed_by_others(
    cluster: Cluster, people: dict[str, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, walt = people["alice"], people["walt"]
    shell = owner_shell(cluster, alice)
    session_id = eventually(lambda: [s["id"] for s in sessions(cluster, alice)])[0]
    forged_id = "11111111-1111-4111-8111-111111111111"
    tracker = {
        "metadata": {"name": forged_id},
        "spec": {
            "session_kind": "shell",
            "user": "alice",
            "login": LOGIN,
            "node": "node-1",
            "roles": ["dev"],
            "started": "2026-01-01T00:00:00+00:00",
        },
    }
    forged = {"put": [tracker], "ttl_seconds": 30}

    # Another node speaks only for its own sessions.
    cluster.start_node("node-2", "env=prod")
    node2 = IdentityFiles.load(cluster.workdir / "node-2" / "identity" / "node")
    with httpx.Client(
        base_url=f"https://{cluster.auth_addr}", verify=node2.tls_context(), timeout=10
    ) as auth:
        answer = auth.post("/v1/sessions", json=forged)
        assert answer.status_code == 403
        assert 'may not track sessions of node "node-1"' in answer.json()["message"]
        answer = auth.post("/v1/sessions", json={"delete": [session_id]})
        assert answer.status_code == 403
        # Its own node name on someone else's live session changes nothing either.
        own = {**tracker, "metadata": {"name": session_id}}
        own["spec"] = {**tracker["spec"], "node": "node-2"}
        answer = auth.post("/v1/sessions", json={"put": [own]})
        assert answer.status_code == 403
        assert "is on another node" in answer.json()["message"]
        answer = auth.post("/v1/sessions", json={"delete": ["../../roles/dev"]})
        assert answer.status_code == 400
        broken = {"metadata": {"name": session_id}, "spec": {"node": 7}}
        answer = auth.post("/v1/sessions", json={"put": [broken]})
        assert answer.status_code == 400
        assert answer.json()["message"].startswith(f'session "{session_id}": spec.')
        answer = auth.post("/v1/sessions", json={"put": "everything"})
        assert answer.status_code == 400

    # A user cannot write trackers at all, even their own.
    monkeypatch.setenv("CERTGATE_HOME", str(walt.home))
    api = connect_profile()
    try:
        with pytest.raises(AccessDenied, match="only cluster services may use session_write"):
            api.call("POST", "/sessions", json=forged)
        with pytest.raises(AccessDenied):
            api.call("POST", "/sessions", json={"delete": [session_id]})
    finally:
        api.close()

    # Alice's session is still listed, unchanged, and no forged one appeared.
    listed = sessions(cluster, alice)
    assert [s["id"] for s in listed] == [session_id]
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_sessions_of_a_dead_node_leave_the_list(cluster: Cluster, people: dict[str, User]) -> None:
    alice = people["alice"]
    process, _ = cluster.start_node("node-3", "env=crash")
    shell = owner_shell(cluster, alice, "node-3")
    on_node3 = eventually(lambda: [s for s in sessions(cluster, alice) if s["node"] == "node-3"])
    assert len(on_node3) == 1

    process.kill()  # no goodbyes: nothing tells auth the session ended
    process.wait()
    shell.expect(pexpect.EOF)
    # Trackers live three heartbeat intervals (1 s here) past their last refresh; the bound
    # is generous for a loaded machine and still far below any default lifetime.
    eventually(
        lambda: not [s for s in sessions(cluster, alice) if s["node"] == "node-3"], timeout=30
    )


def test_services_send_audit_events_in_batches_and_cannot_forge_them(cluster: Cluster) -> None:
    cluster.start_node("node-4", "env=audit")
    node4 = IdentityFiles.load(cluster.workdir / "node-4" / "identity" / "node")
    marker = f"batch-{time.monotonic_ns()}"
    batch = [
        {"event": "exec", "fields": {"user": marker, "command": f"step {n}", "exit_code": 0}}
        for n in range(5)
    ]
    with httpx.Client(
        base_url=f"https://{cluster.auth_addr}", verify=node4.tls_context(), timeout=10
    ) as auth:
        # One bad event refuses the whole call: nothing of it is stored.
        forged = [*batch, {"event": "exec", "fields": {"uid": "mine", "user": marker}}]
        answer = auth.post("/v1/events", json={"events": forged})
        assert answer.status_code == 400
        assert "reserved keys" in answer.json()["message"]
        posing = [*batch, {"event": "exec", "fields": {"server": "auth", "user": marker}}]
        answer = auth.post("/v1/events", json={"events": posing})
        assert answer.status_code == 400
        assert 'must be your role, not "auth"' in answer.json()["message"]
        assert not [e for e in audit(cluster, "exec") if e.get("user") == marker]
        answer = auth.post("/v1/events", json={"events": batch})
        assert answer.status_code == 204
    stored = [e for e in audit(cluster, "exec") if e.get("user") == marker]
    # Newest first; stored in the order sent, each stamped with the sending node.
    assert [e["command"] for e in reversed(stored)] == [f"step {n}" for n in range(5)]
    assert {e["server"] for e in stored} == {"node-4"}
