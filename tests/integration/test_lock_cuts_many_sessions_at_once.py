"""An admin locks a user who holds dozens of shells: every one of them ends at once, and
none of the bookkeeping is lost — each session still gets its `session.end` (reason
locked, the lock's name) and its recording. And the proxy, which holds the user's
connection, cuts it itself: a node that never acts on the lock (stopped here) does not
keep a locked user connected.

Sessions are opened the way `ssh -J` opens them (a jump connection to the proxy, a
direct-tcpip channel to the node, SSH to the node inside it), by asyncssh in this
process: 60 OpenSSH clients would weigh more than the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncssh
import pexpect
import pytest

from tests.support.cluster import Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgmany"
ROLE = f"""\
kind: role
metadata: {{name: shells}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
"""
SESSIONS = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("many"), roles="auth,proxy")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLE)
    yield c
    for node in c.nodes:
        if node.poll() is None:
            os.kill(node.pid, signal.SIGCONT)  # a failed test may leave one stopped
    c.stop()


@dataclass
class Shell:
    jump: asyncssh.SSHClientConnection
    conn: asyncssh.SSHClientConnection
    process: asyncssh.SSHClientProcess[str]


def client_options(user: User) -> dict[str, Any]:
    keys = user.home / "keys"
    known = (keys / "known_hosts").read_text().splitlines()
    ca = next(line.split() for line in known if line.startswith("@cert-authority"))
    return {
        "client_keys": [
            (
                asyncssh.read_private_key(keys / "key"),
                asyncssh.read_certificate(keys / "key-cert.pub"),
            )
        ],
        "known_hosts": asyncssh.import_known_hosts(f"@cert-authority * {ca[2]} {ca[3]}\n"),
    }


async def open_shell(cluster: Cluster, node: str, options: dict[str, Any]) -> Shell:
    jump = await asyncssh.connect("127.0.0.1", cluster.ssh_proxy_port, username="jump", **options)
    conn = await asyncssh.connect(node, 3022, tunnel=jump, username=LOGIN, **options)
    process = await conn.create_process(term_type="xterm", term_size=(80, 24))
    process.stdin.write("echo READY-$((40+2))\n")
    await asyncio.wait_for(process.stdout.readuntil("READY-42"), 30)
    return Shell(jump, conn, process)


async def shown_until_closed(shell: Shell) -> str:
    """What the shell showed from now until it closed (the node's words, if they came
    first), once its jump connection is closed too (the proxy's cut, if it came first)."""
    seen = []
    # The proxy's cut ends the tunnel under the session: a lost connection, not an EOF.
    with contextlib.suppress(asyncssh.ConnectionLost, asyncssh.DisconnectError):
        while chunk := await shell.process.stdout.read(65536):
            seen.append(chunk)
    await shell.process.wait_closed()
    await shell.jump.wait_closed()
    return "".join(seen)


def lock_user(cluster: Cluster, user: str, message: str) -> str:
    out = cluster.cgctl("lock", f"--user={user}", f"--message={message}").stdout
    return out.split("'")[1]


def events(cluster: Cluster, event: str) -> list[dict[str, Any]]:
    out = cluster.cgctl("audit", "ls", f"--event={event}", "--format=json", "--limit=5000")
    return list(json.loads(out.stdout))


def node_named(cluster: Cluster, user: User, name: str) -> None:
    eventually(lambda: name in cluster.cgsh(user, "ls").stdout, timeout=30)


def test_a_lock_ends_every_shell_and_loses_no_event_or_recording(cluster: Cluster) -> None:
    c = cluster
    c.start_node("many-1", "env=many")
    user = c.add_user("busy-admin", roles="shells")
    c.login(user)
    node_named(c, user, "many-1")
    options = client_options(user)

    async def scenario() -> tuple[list[str], str]:
        shells = await asyncio.gather(*(open_shell(c, "many-1", options) for _ in range(SESSIONS)))
        try:
            for shell in shells:  # each is live: it answers
                shell.process.stdin.write("echo ALIVE-$((1+1))\n")
                await asyncio.wait_for(shell.process.stdout.readuntil("ALIVE-2"), 30)
            closing = [asyncio.create_task(shown_until_closed(s)) for s in shells]
            name = await asyncio.to_thread(lock_user, c, user.name, "audit drill")
            shown = await asyncio.wait_for(asyncio.gather(*closing), 60)
            return shown, name
        finally:
            for shell in shells:
                shell.jump.close()

    shown, lock = asyncio.run(scenario())
    # Every shell ended, and its jump connection with it (the proxy's cut, or the node's
    # and then the proxy's, whichever saw the lock first). What a user is told when the
    # proxy is first is the next test's.
    assert len(shown) == SESSIONS
    assert all("audit drill" in text or "READY" not in text for text in shown)

    def all_ended() -> list[dict[str, Any]]:
        ended = [
            e for e in events(c, "session.end")
            if e["user"] == user.name and e.get("lock") == lock
        ]  # fmt: skip
        return ended if len(ended) >= SESSIONS else []

    ended = eventually(all_ended, timeout=60)
    assert {e["reason"] for e in ended} == {"locked"}
    started = {e["session_id"] for e in events(c, "session.start") if e["user"] == user.name}
    assert {e["session_id"] for e in ended} == started
    assert len(started) == SESSIONS

    c.cgctl("rm", f"lock/{lock}")
    c.login(user)

    def all_recorded() -> set[str]:
        out = c.cgsh(user, "recordings", "ls", "--format=json", "--limit=1000").stdout
        ids = {r["id"] for r in json.loads(out)}
        return ids if started <= ids else set()

    eventually(all_recorded, timeout=60)


def test_the_proxy_cuts_a_locked_user_whose_node_does_not(cluster: Cluster) -> None:
    c = cluster
    node, _ = c.start_node("frozen-1", "env=frozen")
    user = c.add_user("frozen-user", roles="shells")
    c.login(user)
    node_named(c, user, "frozen-1")
    config = user.home / "openssh_config"
    config.write_text(c.cgsh(user, "config").stdout)
    live = pexpect.spawn(
        "ssh", ["-F", str(config), "-tt", f"{LOGIN}@frozen-1"], timeout=30, encoding="utf-8"
    )
    live.sendline("echo READY-$((40+2))")
    live.expect("READY-42")
    os.kill(node.pid, signal.SIGSTOP)  # this node will not act on the lock
    try:
        lock_user(c, user.name, "frozen drill")
        # The proxy disconnects the user with the lock's words (the jump ssh prints them).
        live.expect("access denied: locked: frozen drill")
        live.expect(pexpect.EOF)
    finally:
        os.kill(node.pid, signal.SIGCONT)
