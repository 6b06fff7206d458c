"""Demo: a contractor with no standing access requests a role with a reason, an admin
approves with a comment, the waiting command returns, ssh works for a bounded time and
then stops. Reviews, refusals, resource requests and locks on a grant, end to end."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pexpect
import pytest

from tests.support.cluster import BIN, Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgreq"
ROLES = f"""\
kind: role
metadata: {{name: contractor}}
spec:
  allow:
    request:
      roles: [node-access]
      search_as_roles: [node-search]
      suggested_reviewers: [alice]
---
kind: role
metadata: {{name: careful-contractor}}
spec:
  allow:
    request: {{roles: [node-access], thresholds: [{{approve: 2, deny: 1}}]}}
---
kind: role
metadata: {{name: always-contractor}}
spec:
  allow:
    request: {{roles: [node-access]}}
  options: {{request_access: always}}
---
kind: role
metadata: {{name: ticket-minded}}
spec:
  options: {{request_access: reason, request_prompt: "ticket number?"}}
---
kind: role
metadata: {{name: node-access}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
---
kind: role
metadata: {{name: node-search}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
---
kind: role
metadata: {{name: approver}}
spec:
  allow: {{review_requests: {{roles: [node-access, node-search]}}}}
---
kind: role
metadata: {{name: kube-approver}}
spec:
  allow: {{review_requests: {{roles: [kube-member]}}}}
"""


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    cluster = Cluster(tmp_path_factory.mktemp("requests"), roles="auth,proxy,node")
    cluster.start()
    cluster.cgctl("create", "-f", "-", input=ROLES)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def reviewers(c: Cluster) -> dict[str, User]:
    people = {name: c.add_user(name, roles="approver") for name in ("alice", "bob")}
    people["kim"] = c.add_user("kim", roles="kube-approver")
    for person in people.values():
        c.login(person)
    return people


def background(c: Cluster, user: User, *args: str, stdin: str = "") -> subprocess.Popen[str]:
    """A cgsh command left running (it waits for a review)."""
    process = subprocess.Popen(
        [str(BIN / "cgsh"), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CERTGATE_HOME": str(user.home)},
    )  # fmt: skip
    assert process.stdin is not None
    process.stdin.write(stdin)
    process.stdin.close()
    process.stdin = None  # communicate() must not flush it again
    return process


def requests_of(c: Cluster, user: str, state: str) -> list[dict[str, Any]]:
    found = json.loads(c.cgctl("requests", "ls", "--format=json").stdout)
    return [r for r in found if r["spec"]["user"] == user and r["spec"]["state"] == state]


def audit(c: Cluster, event: str) -> list[dict[str, Any]]:
    found = json.loads(c.cgctl("audit", "ls", "--format=json", "--limit=1000").stdout)
    return [e for e in found if e["event"] == event]


def ssh(c: Cluster, user: User, node: str, *command: str) -> subprocess.CompletedProcess[str]:
    return c.cgsh(user, "ssh", f"{LOGIN}@{node}", *command, check=False)


def test_contractor_requests_access_an_admin_approves_and_it_ends(c: Cluster) -> None:
    carl = c.add_user("carl", roles="contractor")
    c.login(carl)
    refused = ssh(c, carl, "node-1", "id")
    assert refused.returncode != 0
    assert 'you may request role "node-access", which would allow it' in refused.stderr
    assert 'cgsh request create --roles=node-access --reason="..."' in refused.stderr

    waiting = background(
        c, carl, "request", "create", "--roles=node-access", "--reason=fix the db",
        "--max-duration=20s",
    )  # fmt: skip
    [pending] = eventually(lambda: requests_of(c, "carl", "PENDING"))
    request_id = pending["metadata"]["name"]
    assert pending["spec"]["suggested_reviewers"] == ["alice"]
    assert waiting.poll() is None  # still waiting for a review
    approved = c.cgctl("requests", "approve", request_id[:8], "--reason=go ahead").stdout
    assert "It is now APPROVED: approved by admin: go ahead" in approved
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert "Approved: approved by admin: go ahead" in out
    assert f"(request {request_id})" in out

    assert ssh(c, carl, "node-1", "echo granted").stdout.strip() == "granted"
    resource = c.cgctl("get", f"access_request/{request_id}").stdout
    assert request_id in resource and "APPROVED" in resource and "node-access" in resource
    status = c.cgsh(carl, "status").stdout
    assert f"Access request:     {request_id} (node-access; approved by admin: go ahead)" in status
    assert "active until" in status

    [created] = [e for e in audit(c, "access_request.create") if e["id"] == request_id]
    assert created["user"] == "carl" and created["reason"] == "fix the db"
    [update] = [e for e in audit(c, "access_request.update") if e["id"] == request_id]
    assert (update["state"], update["user"], update["reason"]) == (
        "APPROVED", "admin", "approved by admin: go ahead"
    )  # fmt: skip
    starts = eventually(lambda: [e for e in audit(c, "session.start") if e["user"] == "carl"])
    assert starts[-1]["access_requests"] == [request_id]

    # The grant ends after its max_duration: the same command is refused.
    eventually(lambda: ssh(c, carl, "node-1", "true").returncode != 0, timeout=40)
    dropped = c.cgsh(carl, "request", "drop").stdout
    assert f"Dropped {request_id}: back to roles contractor" in dropped
    assert "node-access" in ssh(c, carl, "node-1", "id").stderr


def test_two_approvals_from_different_reviewers_and_every_refusal_says_why(
    c: Cluster, reviewers: dict[str, User]
) -> None:
    pete = c.add_user("pete", roles="careful-contractor")
    c.login(pete)
    request_id = c.cgsh(pete, "request", "create", "--roles=node-access", "--nowait").stdout
    request_id = request_id.strip()
    # The same command again (after a Ctrl-C, say) finds the pending request: reviewers
    # are not asked twice.
    again = c.cgsh(pete, "request", "create", "--roles=node-access", "--nowait")
    assert again.stdout.strip() == request_id
    assert f"Not asked twice: this is your pending request {request_id} for the same" in (
        again.stderr
    )
    assert [e["id"] for e in audit(c, "access_request.create") if e["user"] == "pete"] == [
        request_id
    ]

    own = c.cgsh(pete, "request", "review", "--approve", request_id, check=False)
    assert own.returncode == 3
    assert own.stderr.strip() == "error: access denied: you may not review your own access request"
    # Audited, as every refusal: who tried what.
    [tried] = [
        e
        for e in audit(c, "session.rejected")
        if e["user"] == "pete" and e.get("path", "").endswith(f"/{request_id}/reviews")
    ]
    assert tried["reason"] == "access denied: you may not review your own access request"
    kim = c.cgsh(reviewers["kim"], "request", "review", "--approve", request_id, check=False)
    assert kim.stderr.strip() == (
        'error: access denied: you may not review requests for role "node-access": none of '
        "your roles lists it in review_requests"
    )
    first = c.cgsh(reviewers["alice"], "request", "review", "--approve", request_id, "--reason=ok")
    assert "still pending: more reviews are needed" in first.stdout
    again = c.cgsh(reviewers["alice"], "request", "review", "--approve", request_id, check=False)
    assert again.returncode != 0 and "a reviewer counts once" in again.stderr

    # Someone else's request cannot be assumed.
    carl = c.add_user("carl-2", roles="contractor")
    other = c.login(carl, f"--request-id={request_id}", check=False)
    assert other.returncode == 3 and f"request {request_id} is pete's, not yours" in other.stderr

    # Logging in with the pending request waits for the second approval.
    logins = len([e for e in audit(c, "user.login") if e["user"] == "pete"])
    code = pete.otp.next_code()
    login = background(
        c, pete, "login", f"--proxy={c.proxy_addr}", f"--user={pete.name}", "--insecure",
        f"--otp={code}", f"--request-id={request_id}", stdin=pete.password + "\n",
    )  # fmt: skip
    eventually(lambda: len([e for e in audit(c, "user.login") if e["user"] == "pete"]) > logins)
    assert login.poll() is None  # logged in, and waiting for the second review
    second = c.cgsh(reviewers["bob"], "request", "review", "--approve", request_id)
    assert "It is now APPROVED: approved by alice, bob (alice: ok)" in second.stdout
    _, err = login.communicate(timeout=30)
    assert login.returncode == 0, err
    assert ssh(c, pete, "node-1", "echo two").stdout.strip() == "two"

    # A denied request and an expired one are refused with their reason.
    denied = c.cgsh(pete, "request", "create", "--roles=node-access", "--nowait").stdout.strip()
    c.cgsh(reviewers["bob"], "request", "review", "--deny", denied, "--reason=not today")
    refused = c.login(pete, f"--request-id={denied}", check=False)
    assert f"access request {denied} was denied by bob (bob: not today)" in refused.stderr
    expiring = c.cgsh(
        pete, "request", "create", "--roles=node-access", "--request-ttl=1s", "--nowait"
    ).stdout.strip()
    eventually(lambda: "State:         EXPIRED" in c.cgsh(pete, "request", "show", expiring).stdout)
    refused = c.login(pete, f"--request-id={expiring}", check=False)
    assert f"access request {expiring} expired" in refused.stderr
    updates = [e for e in audit(c, "access_request.update") if e["id"] == expiring]
    assert [(e["state"], e["user"]) for e in updates] == [("EXPIRED", "certgate")]


def test_a_resource_request_grants_that_node_and_no_other(c: Cluster) -> None:
    _, node_2_port = c.start_node("node-2", "env=dev")
    rita = c.add_user("rita", roles="contractor")
    c.login(rita)
    found = eventually(
        lambda: "node-2" in (out := c.cgsh(rita, "request", "search", "--kind=node").stdout) and out
    )
    assert "node-1" in found and "cgsh request create --resource=node/" in found
    request_id = c.cgsh(
        rita, "request", "create", "--resource=node/node-2", "--reason=one box", "--nowait"
    ).stdout.strip()
    shown = c.cgsh(rita, "request", "show", request_id).stdout
    assert "Roles:         node-search" in shown and "Resources:     node/node-2" in shown
    assert "Access for:    8h once approved" in shown  # no role limits it: the default
    c.cgctl("requests", "approve", request_id)
    c.login(rita, f"--request-id={request_id}")

    assert ssh(c, rita, "node-2", "echo mine").stdout.strip() == "mine"
    other = ssh(c, rita, "node-1", "true")
    assert other.returncode != 0 and "node-1" in other.stderr
    # Plain OpenSSH straight to each node, past the proxy: node-1 itself refuses.
    keys = rita.home / "keys"

    def direct(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
             "-i", str(keys / "key"), "-o", f"CertificateFile={keys / 'key-cert.pub'}",
             "-p", str(port), f"{LOGIN}@127.0.0.1", "echo direct"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    assert direct(node_2_port).stdout.strip() == "direct"
    refused_direct = direct(c.ssh_port)
    assert refused_direct.returncode != 0 and "direct" not in refused_direct.stdout
    listed = c.cgsh(rita, "ls").stdout
    assert "node-2" in listed and "node-1" not in listed
    assert "Limited to:         node/node-2" in c.cgsh(rita, "status").stdout


def test_a_lock_on_the_request_cuts_the_live_session_started_under_it(
    c: Cluster, reviewers: dict[str, User]
) -> None:
    lena = c.add_user("lena", roles="contractor")
    c.login(lena)
    request_id = c.cgsh(lena, "request", "create", "--roles=node-access", "--nowait").stdout.strip()
    c.cgsh(reviewers["alice"], "request", "review", "--approve", request_id)
    c.login(lena, f"--request-id={request_id}")
    config = lena.home / "openssh_config"
    config.write_text(eventually(lambda: "node-1" in (t := c.cgsh(lena, "config").stdout) and t))
    live = pexpect.spawn(
        "ssh", ["-F", str(config), "-tt", f"{LOGIN}@node-1"], timeout=15, encoding="utf-8"
    )
    live.sendline("echo READY-$((40+2))")
    live.expect("READY-42")  # the session is up: a cut would be seen

    # Its tracker names the granted role, which lena holds only through the request:
    # auth accepts it, so the session is listed (it was refused, with the node's batch).
    def listed() -> list[dict[str, Any]]:
        found = json.loads(c.cgsh(lena, "sessions", "ls", "--format=json").stdout)
        return [s for s in found if s["user"] == "lena"]

    assert eventually(listed)

    out = c.cgctl("lock", f"--access-request={request_id}", "--message=grant revoked").stdout
    assert "lock" in out.lower()
    live.expect("access denied: locked: grant revoked")
    live.expect(pexpect.EOF)
    refused = ssh(c, lena, "node-1", "true")
    assert refused.returncode != 0 and "locked: grant revoked" in refused.stderr
    # The proxy may cut the jump connection first (it sees the lock too); the node then
    # ends the session as locked and its session.end follows within a few seconds.
    ended = eventually(lambda: [e for e in audit(c, "session.end") if e["user"] == "lena"])
    assert ended[-1].get("reason") == "locked"
    missing = c.cgctl("lock", "--access-request=not-a-request", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_request_access_always_makes_login_request_and_wait(c: Cluster) -> None:
    olga = c.add_user("olga", roles="always-contractor")
    code = olga.otp.next_code()
    login = background(
        c, olga, "login", f"--proxy={c.proxy_addr}", f"--user={olga.name}", "--insecure",
        f"--otp={code}", "--request-reason=on call", stdin=olga.password + "\n",
    )  # fmt: skip
    [pending] = eventually(lambda: requests_of(c, "olga", "PENDING"))
    assert pending["spec"]["roles"] == ["node-access"] and pending["spec"]["reason"] == "on call"
    assert login.poll() is None  # logged in, and waiting for the review
    c.cgctl("requests", "approve", pending["metadata"]["name"])
    _, err = login.communicate(timeout=30)
    assert login.returncode == 0, err
    assert ssh(c, olga, "node-1", "echo always").stdout.strip() == "always"

    # A role saying `reason` beside it: the login's request needs one, and says how.
    rhea = c.add_user("rhea", roles="always-contractor,ticket-minded")
    bare = c.login(rhea, check=False)
    assert bare.returncode == 2
    assert bare.stderr.strip().endswith(
        "your roles require a reason for access requests (ticket number?): "
        "cgsh login --request-reason=..."
    )
    assert not requests_of(c, "rhea", "PENDING")
