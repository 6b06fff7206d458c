"""A node's live sessions end through the session monitor (srv/monitor.py): a lock put,
a stale lock view under strict locking, client_idle_timeout and an expired certificate
(disconnect_expired_cert) — each shown to the user as one line. Logins go through the
same Authorizer as in production (srv/authorize.py) over a stand-in view, so
require_session_mfa and ssh_remote_bind_any are decided as in a cluster. Real OpenSSH
clients; the proxy's agentless sessions are cut by the same monitor in
tests/proxy/test_agentless.py."""

from __future__ import annotations

import asyncio
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certgate.access.cached_access import CachedAccess
from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.api.role import Role, RoleConditions, RoleOptions, RoleSpec
from certgate.node.sshd import NodeSSHServer
from certgate.srv.authorize import access_authorizer
from certgate.srv.monitor import SessionMonitor
from tests.node.conftest import ALICE, Authorities, CredsFactory, Node, UserCreds
from tests.support.net import free_port
from tests.support.views import StubView
from tests.support.wait import eventually

READY = "echo READY; exec cat"


def _role(name: str, **options: Any) -> Role:
    return Role(
        metadata=Metadata(name=name),
        spec=RoleSpec(
            allow=RoleConditions(logins=[ALICE], node_labels={"*": "*"}),
            options=RoleOptions(**options),
        ),
    )


ROLES = {
    role.name: role
    for role in (
        _role("dev"),
        _role("idle", client_idle_timeout=timedelta(seconds=1)),
        _role("expiring", disconnect_expired_cert=True),
        _role("strict", locking_mode="strict"),
        _role("mfa", require_session_mfa=True),
        _role("bind-any", ssh_remote_bind_any=True),
    )
}


@pytest.fixture(scope="module")
def mnode(
    unix_users: dict[str, pwd.struct_passwd], authorities: Authorities
) -> Iterator[tuple[Node, StubView, SessionMonitor]]:
    events: list[tuple[str, dict[str, Any]]] = []

    async def audit(event: str, fields: dict[str, Any]) -> None:
        events.append((event, fields))

    host_key = ed25519.Ed25519PrivateKey.generate()
    host_public = host_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    host_cert = authorities.host.sign_host_ssh(
        host_public.decode(), "node-1", ["127.0.0.1"], datetime.now(UTC) + timedelta(hours=1)
    )
    host_key_pem = host_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    view = StubView({"role": dict(ROLES), "lock": {}})
    access = CachedAccess(view)  # type: ignore[arg-type]

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="node-monitor", daemon=True)
    thread.start()

    async def build() -> tuple[NodeSSHServer, SessionMonitor, int]:
        server = NodeSSHServer(
            host_key_pem,
            host_cert,
            lambda: authorities.user_ca_lines,
            access_authorizer(access, "node-1", {"env": "lab"}),
            audit,
            "node-1",
        )
        monitor = SessionMonitor(server.registry, access, server="node", tick=0.05)
        monitor.start()
        return server, monitor, await server.start("127.0.0.1", 0)

    server, monitor, port = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
    node = Node(server, port, loop, events, [])
    try:
        yield node, view, monitor
    finally:
        node.call(monitor.close())
        node.call(server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class Live:
    """A running `ssh node 'echo READY; exec cat'`: what is typed comes back."""

    def __init__(self, node: Node, creds: UserCreds, *options: str) -> None:
        argv = node.ssh_argv(creds, ALICE, READY, options=options)
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        line = self.process.stdout.readline()
        assert line == b"READY\n", self.finish()

    def echo(self, text: str) -> bool:
        """Type a line; True if it came back (the session is alive)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(text.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return False
        return self.process.stdout.readline() == text.encode() + b"\n"

    def finish(self, timeout: float = 10) -> tuple[int, str]:
        """Wait for the session to end, its input still open: (exit status, stderr)."""
        assert self.process.stderr is not None
        status = self.process.wait(timeout)
        return status, self.process.stderr.read().decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()  # and close the pipes


def test_a_lock_put_ends_the_targeted_session_with_its_message(
    mnode: tuple[Node, StubView, SessionMonitor], make_creds: CredsFactory
) -> None:
    node, view, monitor = mnode
    victim = Live(node, make_creds("lockee", (ALICE,), roles=("dev",)))
    bystander = Live(node, make_creds("bystander", (ALICE,), roles=("dev",)))
    lock = Lock(
        metadata=Metadata(name="lk-1"),
        spec=LockSpec(target=LockTarget(user="lockee"), message="incident 42"),
    )
    view.items["lock"]["lk-1"] = lock
    try:
        node.call(monitor.on_change("lock", "lk-1", lock))
        status, err = victim.finish()
        assert status != 0
        assert "access denied: locked: incident 42" in err
        assert bystander.echo("still-here")
        end = node.wait_for_event(
            "session.end", lambda f: f["user"] == "lockee" and f["reason"] == "locked"
        )
        assert end["lock"] == "lk-1"
    finally:
        del view.items["lock"]["lk-1"]
        victim.kill()
        bystander.kill()


def test_a_stale_view_ends_strict_sessions_only(
    mnode: tuple[Node, StubView, SessionMonitor], make_creds: CredsFactory
) -> None:
    node, view, _ = mnode
    strict = Live(node, make_creds("stricty", (ALICE,), roles=("strict",)))
    relaxed = Live(node, make_creds("relaxy", (ALICE,), roles=("dev",)))
    view.silence = 1000  # auth has not been heard from for longer than the grace
    try:
        status, err = strict.finish()
        assert status != 0
        assert "this node cannot confirm locks with auth" in err
        assert relaxed.echo("unaffected")
    finally:
        view.silence = 0
        strict.kill()
        relaxed.kill()


def test_an_idle_session_ends_with_a_message_and_typing_keeps_it(
    mnode: tuple[Node, StubView, SessionMonitor], make_creds: CredsFactory
) -> None:
    node, _, _ = mnode
    live = Live(node, make_creds("idler", (ALICE,), roles=("idle",)))
    try:
        # Typing for three times the timeout keeps the session: input resets the clock.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert live.echo("typing"), live.finish()
            time.sleep(0.3)
        started = time.monotonic()
        status, err = live.finish()
        assert status != 0
        assert time.monotonic() - started < 20  # generous: ending at all is the point
        assert "certgate: session ended: no input for 1s (client_idle_timeout of your roles)" in err
        end = node.wait_for_event("session.end", lambda f: f["user"] == "idler")
        assert end["reason"] == "idle timeout"
    finally:
        live.kill()


def test_a_session_ends_when_its_certificate_expires_if_the_roles_say_so(
    mnode: tuple[Node, StubView, SessionMonitor], make_creds: CredsFactory
) -> None:
    node, _, _ = mnode
    now = datetime.now(UTC)
    valid = (now - timedelta(minutes=1), now + timedelta(seconds=3))
    expiring = Live(node, make_creds("shortlived", (ALICE,), roles=("expiring",), valid=valid))
    lasting = Live(node, make_creds("outliver", (ALICE,), roles=("dev",), valid=valid))
    try:
        status, err = expiring.finish()
        assert status != 0
        assert "your certificate expired at" in err and "disconnect_expired_cert" in err
        # SSH certificate validity is in whole seconds.
        assert datetime.now(UTC) >= valid[1].replace(microsecond=0)
        # Without the option the session outlives its certificate (as before).
        assert lasting.echo("after-expiry")
        end = node.wait_for_event("session.end", lambda f: f["user"] == "shortlived")
        assert end["reason"] == "certificate expired"
    finally:
        expiring.kill()
        lasting.kill()


def test_require_session_mfa_refuses_new_sessions(
    mnode: tuple[Node, StubView, SessionMonitor], make_creds: CredsFactory
) -> None:
    node, _, _ = mnode
    creds = make_creds("mfa-user", (ALICE,), roles=("dev", "mfa"))
    result = subprocess.run(node.ssh_argv(creds, ALICE, "true"), capture_output=True, timeout=30)
    assert result.returncode == 255 and b"Permission denied" in result.stderr
    rejected = node.wait_for_event("session.rejected", lambda f: f["user"] == "mfa-user")
    assert rejected["reason"] == (
        'access denied: role "mfa" requires per-session MFA, '
        "which this cluster does not support yet"
    )
    assert not [f for f in node.events_named("session.start") if f["user"] == "mfa-user"]


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(("roles", "elsewhere"), [(("dev",), False), (("bind-any",), True)])
def test_remote_forwards_listen_on_loopback_unless_the_roles_allow_more(
    mnode: tuple[Node, StubView, SessionMonitor],
    make_creds: CredsFactory,
    roles: tuple[str, ...],
    elsewhere: bool,
) -> None:
    node, _, _ = mnode
    port = free_port()
    creds = make_creds("forwarder", (ALICE,), roles=roles)
    argv = node.ssh_argv(
        creds, ALICE, options=("-N", "-o", "ExitOnForwardFailure=yes",
                               "-R", f"0.0.0.0:{port}:127.0.0.1:9"),
    )  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        eventually(lambda: _connects("127.0.0.1", port) or process.poll() is not None)
        assert process.poll() is None, process.communicate()
        # 127.0.0.2 is another local address: reachable only if the listener is not
        # bound to 127.0.0.1 alone (what "all interfaces" would expose to a network).
        assert _connects("127.0.0.2", port) is elsewhere
        forward = node.wait_for_event(
            "port_forward",
            lambda f: f["user"] == "forwarder" and f["addr"].endswith(f":{port}"),
        )
        assert forward["addr"] == (f"0.0.0.0:{port}" if elsewhere else f"127.0.0.1:{port}")
    finally:
        process.kill()
        process.communicate()
