"""An admin watches a contractor's `kubectl exec -it` live, as SSH sessions are watched
(issue 11: kube exec/attach sessions are joinable by policy).

Real certgate processes (auth + proxy, and a kube service that joined with a token), real
kubectl 1.37 in a real terminal (pexpect) against the API-server stand-in, and real
`cgsh join` (stock OpenSSH to the proxy's SSH port) in terminals of their own.
"""

from __future__ import annotations

import io
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pexpect  # type: ignore[import-untyped]
import pytest

from certgate.api.session_tracker import join_login
from tests.support.cluster import BIN, Cluster, User
from tests.support.kube_cluster import KUBECTL, KubeSetup, started_kube
from tests.support.kube_standin import Grant
from tests.support.wait import eventually

ROLES = """
kind: role
version: v1
metadata: {name: kube-contractor}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
---
kind: role
version: v1
metadata: {name: kube-watcher}
spec:
  allow:
    join_sessions: [{roles: [kube-contractor], kinds: [k8s], modes: [observer, peer]}]
---
kind: role
version: v1
metadata: {name: kube-brief-watcher}
spec:
  allow:
    join_sessions: [{roles: [kube-contractor], kinds: [k8s], modes: [observer]}]
  options: {disconnect_expired_cert: true}
---
kind: role
version: v1
metadata: {name: ssh-watcher}
spec:
  allow:
    join_sessions: [{roles: [kube-contractor], kinds: [ssh], modes: [observer]}]
    rules: [{resources: [session], verbs: [list, read]}]
"""


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeSetup]:
    grants = [Grant(("group:system:masters",))]
    with started_kube(tmp_path_factory.mktemp("kjoin"), grants, ROLES) as setup:
        yield setup


@pytest.fixture(scope="module")
def people(kube: KubeSetup) -> dict[str, User]:
    users = {}
    for name, roles in (
        ("contractor", "kube-contractor"),
        ("kadmin", "kube-watcher"),
        ("lead", "kube-watcher"),
        ("sshwatch", "ssh-watcher"),
    ):
        users[name] = kube.cluster.add_user(name, roles=roles)
        kube.cluster.login(users[name])
    contractor = users["contractor"]
    eventually(lambda: "dev-cluster" in kube.cluster.cgsh(contractor, "kube", "ls").stdout)
    result = kube.kube_login(contractor)
    assert result.returncode == 0, result.stderr
    return users


def exec_shell(kube: KubeSetup, user: User) -> tuple[pexpect.spawn, str]:
    """`kubectl exec -it` in a real terminal, and its live session's id."""
    # The previous test's session may still be listed for a moment after its kubectl exited.
    earlier = {s["id"] for s in sessions(kube.cluster, user)}
    child = pexpect.spawn(
        str(KUBECTL),
        ["-n", "default", "exec", "-it", "shell", "--", "/bin/sh"],
        env={**kube.env(user), "TERM": "xterm"},
        dimensions=(30, 100),
        timeout=20,
        encoding="utf-8",
    )
    child.expect(r"\$ ")
    found = eventually(
        lambda: [s["id"] for s in sessions(kube.cluster, user) if s["id"] not in earlier]
    )
    assert len(found) == 1, f"one kubectl exec, sessions {found} started"
    return child, found[0]


def sessions(cluster: Cluster, user: User) -> list[dict[str, Any]]:
    out = cluster.cgsh(user, "sessions", "ls", "--format=json").stdout
    return [s for s in json.loads(out) if s["kind"] == "k8s"]


def join(user: User, session_id: str, *extra: str) -> pexpect.spawn:
    return pexpect.spawn(
        str(BIN / "cgsh"),
        ["join", session_id, *extra],
        env={**os.environ, "CERTGATE_HOME": str(user.home), "TERM": "xterm"},
        timeout=20,
        encoding="utf-8",
    )


def watched(kube: KubeSetup, owner: User, watcher: User) -> tuple[pexpect.spawn, pexpect.spawn]:
    """`owner`'s kubectl exec, and `watcher` observing it (both terminals)."""
    shell, session_id = exec_shell(kube, owner)
    observer = join(watcher, session_id)
    observer.expect(f"joined session {session_id} as observer")
    shell.expect_exact(f"{watcher.name} joined (observer)")
    return shell, observer


@contextmanager
def locked(cluster: Cluster, user: str, message: str) -> Iterator[None]:
    """A lock on `user` while the block runs."""
    out = cluster.cgctl("lock", f"--user={user}", f"--message={message}").stdout
    name = out.split("'")[1]  # "lock 'NAME' created ..."
    try:
        yield
    finally:
        cluster.cgctl("rm", f"lock/{name}")


def audit(cluster: Cluster, event: str) -> list[dict[str, Any]]:
    out = cluster.cgctl("audit", "ls", f"--event={event}", "--format=json", "--limit=500").stdout
    found: list[dict[str, Any]] = json.loads(out)
    return found


def test_an_admin_observes_a_contractors_exec(kube: KubeSetup, people: dict[str, User]) -> None:
    contractor, kadmin = people["contractor"], people["kadmin"]
    shell, session_id = exec_shell(kube, contractor)
    shown = io.StringIO()  # everything the contractor's terminal shows from here on
    shell.logfile_read = shown
    shell.sendline("echo before-$((20+1))")
    shell.expect("before-21")
    [listed] = eventually(lambda: sessions(kube.cluster, kadmin))
    assert (listed["id"], listed["node"], listed["join_modes"]) == (
        session_id,
        "dev-cluster",
        ["observer"],  # the role says peer too: not for kubernetes sessions
    )

    # The admin joins by a prefix of the id: the recent output first, then live output.
    observer = join(kadmin, session_id[:8])
    observer.expect(f"joined session {session_id} as observer")
    observer.expect("before-21")
    shell.expect_exact("kadmin joined (observer)")
    shell.sendline("echo observed-$((6*7))")
    shell.expect("observed-42")
    observer.expect("observed-42")

    # The observer's keystrokes go nowhere (checked once later output has arrived).
    observer.send("echo typed-by-observer-$((1+1))\r")
    shell.sendline("echo after-$((3+3))")
    shell.expect("after-6")
    observer.expect("after-6")
    assert "typed-by-observer-2" not in shown.getvalue()
    assert "after-6" in shown.getvalue()  # the observation that would have shown it

    # The tracker names the observer.
    def participants() -> list[tuple[str, str]]:
        found = [s for s in sessions(kube.cluster, kadmin) if s["id"] == session_id]
        return [(p["user"], p["mode"]) for p in found[0]["participants"]] if found else []

    eventually(lambda: participants() == [("kadmin", "observer")])

    # kubectl exits: the observer is told and let go.
    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    observer.expect("the session has ended")
    observer.expect(pexpect.EOF)

    def membership() -> list[dict[str, Any]]:
        events = audit(kube.cluster, "session.join,session.leave")
        return [e for e in reversed(events) if e.get("session_id") == session_id]

    events = eventually(lambda: (found := membership()) and len(found) == 2 and found)
    assert [(e["event"], e["user"], e["mode"], e["session_user"]) for e in events] == [
        ("session.join", "kadmin", "observer", "contractor"),
        ("session.leave", "kadmin", "observer", "contractor"),
    ]
    where = {
        (e["kubernetes_cluster"], e["kubernetes_namespace"], e["kubernetes_pod"]) for e in events
    }
    assert where == {("dev-cluster", "default", "shell")}


def test_joining_without_join_sessions_for_k8s_is_refused(
    kube: KubeSetup, people: dict[str, User]
) -> None:
    contractor, sshwatch, kadmin = people["contractor"], people["sshwatch"], people["kadmin"]
    shell, session_id = exec_shell(kube, contractor)

    # sshwatch may list sessions, and join the contractor's SSH ones, not kubectl's.
    assert [s["join_modes"] for s in sessions(kube.cluster, sshwatch)] == [[]]
    refused = kube.cluster.cgsh(sshwatch, "join", session_id, check=False)
    assert refused.returncode == 3
    assert refused.stderr.strip() == (
        "error: access denied: your roles do not allow joining contractor's session as "
        "observer (role option join_sessions)"
    )

    # Typing into someone's kubectl exec is not built: cgsh says so, in one line.
    peer = kube.cluster.cgsh(kadmin, "join", session_id, "--mode=peer", check=False)
    assert peer.returncode == 2
    assert peer.stderr.strip() == (
        "error: peer join of a Kubernetes session is not supported; join as observer"
    )

    # Skipping cgsh: stock OpenSSH with the join login, straight to the proxy.
    def stock_join(user: User, login: str) -> subprocess.CompletedProcess[str]:
        config = user.home / "join_config"
        config.write_text(kube.cluster.cgsh(user, "config").stdout)
        return subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-tt", "-l", login,
             f"certgate-proxy.{kube.cluster.cluster_name}"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    for user, login in (
        (sshwatch, join_login("observer", session_id)),  # no join_sessions for k8s
        (kadmin, join_login("peer", session_id)),  # not built for kube sessions
        (kadmin, join_login("observer", "../../v1/roles")),  # not a session id
    ):
        result = stock_join(user, login)
        assert result.returncode == 255, result
        assert "Permission denied" in result.stderr
    reasons = [
        e["reason"]
        for e in audit(kube.cluster, "session.rejected")
        if session_id in e.get("login", "") or "roles" in e.get("login", "")
    ]
    assert (
        "access denied: your roles do not allow joining contractor's kubernetes sessions "
        "as observer (role option join_sessions)"
    ) in reasons
    assert "peer join of a Kubernetes session is not supported; join as observer" in reasons
    assert 'session "../../v1/roles" not found: session ids are UUIDs' in reasons

    # The kube service's observer route is a header that the kube listener drops from
    # what kubectl sends: a Kubernetes call carrying it stays a Kubernetes call.
    keys = contractor.home / "keys"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(keys / "tls.crt"), str(keys / "key.pem"))
    with httpx.Client(verify=context, timeout=20) as client:
        answer = client.get(
            f"https://127.0.0.1:{kube.kube_proxy_port}/k8s/dev-cluster/api/v1/namespaces/"
            "default/pods",
            headers={"X-Certgate-Observe-Session": session_id},
        )
    assert answer.status_code == 200
    assert answer.json()["kind"] == "PodList"
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_a_lock_on_the_observer_ends_its_view(kube: KubeSetup, people: dict[str, User]) -> None:
    shell, observer = watched(kube, people["contractor"], people["lead"])

    with locked(kube.cluster, "lead", "no more watching"):
        observer.expect("access denied: locked: no more watching")
        observer.expect(pexpect.EOF)
        shell.expect_exact("lead left")
        # The contractor's session goes on.
        shell.sendline("echo still-$((4+4))")
        shell.expect("still-8")
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_an_observers_view_ends_when_its_certificate_expires(
    kube: KubeSetup, people: dict[str, User]
) -> None:
    brief = kube.cluster.add_user("brief", roles="kube-brief-watcher")
    kube.cluster.login(brief, "--ttl=12s")
    shell, observer = watched(kube, people["contractor"], brief)
    observer.expect(r"your certificate expired at .* \(disconnect_expired_cert of your roles\)", 30)
    observer.expect(pexpect.EOF)
    shell.expect_exact("brief left")
    # The contractor's session goes on (its roles set no expiry).
    shell.sendline("echo still-$((4+5))")
    shell.expect("still-9")
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_an_observer_of_a_locked_session_sees_the_lock_message(
    kube: KubeSetup, people: dict[str, User]
) -> None:
    shell, observer = watched(kube, people["contractor"], people["kadmin"])

    with locked(kube.cluster, "contractor", "under review"):
        shell.expect("under review")
        shell.expect(pexpect.EOF)
        # The observer reads why, not only that the session ended.
        observer.expect("access denied: locked: under review")
        observer.expect("the session has ended")
        observer.expect(pexpect.EOF)
