"""A user locked while following the cluster's watch stream loses the stream at once,
not at their next reconnect; another user's stream goes on. Written from the side of
the locked user, who keeps the stream open and waits to see what comes through."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import Cluster, User

WATCHER_ROLE = """\
kind: role
metadata: {name: role-watcher}
spec:
  allow:
    rules: [{resources: [role], verbs: [list, read]}]
"""


def _role(name: str) -> str:
    return f"kind: role\nmetadata: {{name: {name}}}\nspec: {{allow: {{logins: [nobody]}}}}\n"


@contextmanager
def _watch(cluster: Cluster, user: User) -> Iterator[Iterator[dict[str, object]]]:
    """The user's own watch of roles through the proxy, as `cgctl`/plugins open it."""
    identity = IdentityFiles.load(user.home / "keys")
    with (
        httpx.Client(verify=identity.tls_context(insecure=True), timeout=15) as http,
        http.stream(
            "GET", f"https://{cluster.proxy_addr}/v1/api/watch", params={"kinds": "role"}
        ) as stream,
    ):
        assert stream.status_code == 200, stream.read()
        yield (json.loads(line) for line in stream.iter_lines() if line)


def _until_put(messages: Iterator[dict[str, object]], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for message in messages:
        resource = message.get("resource")
        if message["type"] == "put" and isinstance(resource, dict):
            if resource["metadata"]["name"] == name:
                return
        assert time.monotonic() < deadline, f"no put of {name} within {timeout}s"
    raise AssertionError(f"the stream ended before the put of {name}")


def test_a_lock_ends_the_locked_users_open_watch_and_no_one_elses(cluster: Cluster) -> None:
    cluster.cgctl("create", "-f", "-", input=WATCHER_ROLE)
    mallory = cluster.add_user("watch-mallory", roles="role-watcher")
    bystander = cluster.add_user("watch-bystander", roles="role-watcher")
    cluster.login(mallory)
    cluster.login(bystander)
    with _watch(cluster, mallory) as mine, _watch(cluster, bystander) as theirs:
        assert next(mine)["type"] == "snapshot"
        assert next(theirs)["type"] == "snapshot"
        # Both streams are live: each sees a role created now.
        cluster.cgctl("create", "-f", "-", input=_role("seen-before-the-lock"))
        _until_put(mine, "seen-before-the-lock")
        _until_put(theirs, "seen-before-the-lock")

        cluster.cgctl("lock", "--user=watch-mallory", "--message=under review")
        # The locked user's stream says why and ends; before the change it went on
        # pinging every second for as long as the connection lasted.
        # Auth ends it abruptly (no final chunk), so no client takes the end for "nothing
        # more to say": the watcher reconnects, and is refused.
        deadline = time.monotonic() + 15
        last: dict[str, object] = {}
        with contextlib.suppress(httpx.RemoteProtocolError):
            for message in mine:
                last = message
                assert time.monotonic() < deadline, "the locked user's watch is still open"
        assert last.get("type") == "closed"
        assert "under review" in str(last.get("reason"))

        # The other user's stream goes on and still delivers.
        cluster.cgctl("create", "-f", "-", input=_role("seen-after-the-lock"))
        _until_put(theirs, "seen-after-the-lock")

    # Reconnecting does not help the locked user.
    identity = IdentityFiles.load(mallory.home / "keys")
    with httpx.Client(verify=identity.tls_context(insecure=True), timeout=15) as http:
        answer = http.get(f"https://{cluster.proxy_addr}/v1/api/watch", params={"kinds": "role"})
        assert answer.status_code == 403
