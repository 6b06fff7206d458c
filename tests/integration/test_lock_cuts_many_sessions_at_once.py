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
import fcntl
import json
import os
import select
import signal
import socket
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncssh
import pexpect
import pytest

from tests.support.cluster import Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually, eventually_async

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


def user_of_a_new_node(cluster: Cluster, node: str, name: str) -> tuple[User, dict[str, Any]]:
    """A new node (label env=<node>), a user with shells there, and its client options."""
    cluster.start_node(node, f"env={node}")
    user = cluster.add_user(name, roles="shells")
    cluster.login(user)
    node_named(cluster, user, node)
    return user, client_options(user)


def test_a_lock_ends_every_shell_and_loses_no_event_or_recording(cluster: Cluster) -> None:
    c = cluster
    user, options = user_of_a_new_node(c, "many-1", "busy-admin")

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


class StallingLink:
    """The client host's end of its connection to the proxy, relayed so the test can stop
    taking what the proxy sends, as a client does whose terminal is stalled or whose
    link is dead: the proxy's output then waits in the kernels' buffers."""

    def __init__(self, proxy_port: int) -> None:
        self._proxy_port = proxy_port
        self.proxy_side: socket.socket | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._to_client: asyncio.Task[None] | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self._server = server
        return int(server.sockets[0].getsockname()[1])

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        sock = socket.socket()
        # A small receive buffer: once it is full the proxy's output has to wait.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self._proxy_port))
        proxy_r, proxy_w = await asyncio.open_connection(sock=sock, limit=32 * 1024)
        self.proxy_side = sock
        self._writers = [client_w, proxy_w]
        self._to_client = asyncio.create_task(_pump(proxy_r, client_w))
        self._pumps = [self._to_client, asyncio.create_task(_pump(client_r, proxy_w))]

    def stall(self) -> None:
        """Take nothing more from the proxy."""
        assert self._to_client is not None
        self._to_client.cancel()

    def waiting(self) -> int:
        """Bytes the proxy sent that wait, unread, on this side."""
        assert self.proxy_side is not None
        return int.from_bytes(fcntl.ioctl(self.proxy_side, termios.FIONREAD, b"\0" * 4), "little")

    def ended(self) -> bool:
        """Whether the proxy's end of the connection (a FIN or a reset) reached this side."""
        assert self.proxy_side is not None
        poll = select.poll()
        poll.register(self.proxy_side, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return bool(poll.poll(0))

    async def close(self) -> None:
        for task in self._pumps:
            task.cancel()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._server.close()
        await self._server.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def test_a_locked_client_that_reads_nothing_is_cut_at_once(cluster: Cluster) -> None:
    # A busy session whose client stopped reading: its output fills every buffer on the
    # way. The lock still ends its connection at once; the output it never took is
    # dropped, not drained first (which would take as long as the client reads nothing).
    c = cluster
    user, options = user_of_a_new_node(c, "stalled-1", "stalled-user")

    async def scenario() -> None:
        link = StallingLink(c.ssh_proxy_port)
        port = await link.start()
        jump = await asyncssh.connect("127.0.0.1", port, username="jump", **options)
        try:
            conn = await asyncssh.connect("stalled-1", 3022, tunnel=jump, username=LOGIN, **options)
            process = await conn.create_process("yes stalled-output")
            await process.stdout.readuntil("stalled-output")
            link.stall()
            # Output piles up unread on the client's side; the connection is still up.
            await eventually_async(lambda: link.waiting() >= 16 * 1024)
            assert not link.ended()
            await asyncio.to_thread(lock_user, c, user.name, "stall drill")
            await eventually_async(link.ended, timeout=10)
        finally:
            jump.close()
            await link.close()

    asyncio.run(scenario())
