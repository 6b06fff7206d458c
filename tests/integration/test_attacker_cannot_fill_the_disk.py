"""An attacker with no certificate sends megabyte names to login and join: each try is
refused before anything is written, and the data dir does not grow. A name with a
trailing newline is no name at all."""

from __future__ import annotations

import json

from tests.support.cluster import Cluster
from tests.support.raw_http import admin_context, dir_size, send, send_json

HUGE = "a" * 1_000_000  # under the 1 MiB body limit, so the name itself is what is refused
TRIES = 50


def audit(cluster: Cluster, event: str) -> list[dict[str, object]]:
    out = cluster.cgctl("audit", "ls", f"--event={event}", "--format=json", "--limit=1000")
    events: list[dict[str, object]] = json.loads(out.stdout)
    return events


def login_body(user: str) -> dict[str, str]:
    return {"user": user, "password": "x" * 16, "otp": "123456", "public_key": "ssh-ed25519 AAAA"}


def join_body(name: str) -> dict[str, str]:
    return {"token": "0" * 32, "role": "node", "public_key": "ssh-ed25519 AAAA", "name": name}


def test_huge_names_on_login_and_join_are_refused_without_a_write(cluster: Cluster) -> None:
    # What a refused login with a plain name leaves, so the checks below could see it.
    status, _ = send_json(cluster.proxy_addr, "/v1/login", login_body("disk-ghost"))
    assert status == 403
    assert any(e.get("user") == "disk-ghost" for e in audit(cluster, "user.login.failure"))
    status, _ = send_json(cluster.auth_addr, "/v1/join", join_body("disk-host"))
    assert status == 403
    assert any(e.get("name") == "disk-host" for e in audit(cluster, "join.failure"))

    before = dir_size(cluster.data_dir)
    for _ in range(TRIES):
        status, answer = send_json(cluster.proxy_addr, "/v1/login", login_body(HUGE))
        assert status == 400, answer
        assert "invalid user name" in answer["message"]
        assert len(answer["message"]) < 300  # the name is cut, not echoed whole
        status, answer = send_json(cluster.auth_addr, "/v1/join", join_body(HUGE))
        assert status == 400, answer
        assert "invalid host name" in answer["message"]
    grown = dir_size(cluster.data_dir) - before
    # 100 megabyte names stored anywhere would be 100 MB; a heartbeat or two is not.
    assert grown < 1_000_000, f"the data dir grew by {grown} bytes"
    failures = audit(cluster, "user.login.failure") + audit(cluster, "join.failure")
    assert not [e for e in failures if len(json.dumps(e)) > 10_000]
    assert "aaaaaaaaaa" * 100 not in (cluster.log.read_text())


def test_a_name_with_a_trailing_newline_is_refused_everywhere(cluster: Cluster) -> None:
    # The plain name works, so each refusal below is about the newline alone.
    cluster.add_user("nl-alice", logins="alice")
    context = admin_context(cluster.data_dir)

    status, answer = send_json(cluster.proxy_addr, "/v1/login", login_body("nl-alice\n"))
    assert status == 400 and "invalid user name" in answer["message"]
    assert not [e for e in audit(cluster, "user.login.failure") if e.get("user") == "nl-alice\n"]

    added = cluster.cgctl("users", "add", "nl-alice\n", "--roles=access", check=False)
    assert added.returncode != 0
    assert len(added.stderr.strip().splitlines()) == 1 and "invalid user name" in added.stderr

    locked = cluster.cgctl("lock", "--user=nl-alice\n", check=False)
    assert locked.returncode == 2 and "Traceback" not in locked.stderr
    assert len(locked.stderr.strip().splitlines()) == 1 and "user" in locked.stderr

    user = {"kind": "user", "version": "v1", "metadata": {"name": "nl-alice\n"}}
    status, answer = send_json(cluster.auth_addr, "/v1/resources", {"resource": user}, context)
    assert status == 400 and "metadata.name" in answer["message"]

    lock = {
        "kind": "lock",
        "version": "v1",
        "metadata": {"name": "nl-lock"},
        "spec": {"target": {"user": "nl-alice\n"}},
    }
    status, answer = send_json(cluster.auth_addr, "/v1/resources", {"resource": lock}, context)
    assert status == 400 and "spec.target.user" in answer["message"]

    status, users = send(cluster.auth_addr, "GET", "/v1/resources/user", context=context)
    assert status == 200
    assert [u["metadata"]["name"] for u in users if u["metadata"]["name"].startswith("nl-")] == [
        "nl-alice"
    ]
