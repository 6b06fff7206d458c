"""The proxy's agentless SSH server, in process: a real jump host (ProxySSH), the
AgentlessForwarder, a stock sshd, and asyncssh as the user's client. Covers what the
integration tests cannot see from outside: observers (recording), the live session
list, terminate_sessions, end_session, exit signals, -L and -R relays, refusals, and
the session monitor (locks, strict staleness, idle time, expired certificates) — the
same monitor as a node's (tests/node/test_session_monitor.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from certgate.access.cached_access import CachedAccess
from certgate.api.certs import identity_from_ssh_cert, load_ssh_public_key_text
from certgate.api.identity import Identity
from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.api.role import Role, RoleConditions, RoleOptions, RoleSpec
from certgate.auth.ca import CASigner, generate_authority
from certgate.daemon.event_loop import ASYNCIO, UVLOOP, loop_factory
from certgate.proxy.agentless import AgentlessForwarder
from certgate.proxy.agentless_certs import Signed
from certgate.proxy.agentless_user import Dialled, _OnwardTunnel
from certgate.proxy.sshd import ProxySSH
from certgate.srv.monitor import SessionMonitor
from certgate.srv.session import SessionInfo, SessionRefused
from tests.support.net import free_port
from tests.support.sshd import Sshd, make_host_key, run_sshd
from tests.support.unix import ensure_user
from tests.support.views import StubView

LOGIN = "cgag"
NODE = "sshd-1"
CLUSTER = "agentless-test.example"
REFUSE_OBSERVED = "refuse-observed"  # a command the test observer refuses


@dataclass
class Authorities:
    user: CASigner
    host: CASigner


@pytest.fixture(scope="module")
def authorities() -> Authorities:
    now = datetime.now(UTC)
    return Authorities(
        user=CASigner(generate_authority("user_ssh", CLUSTER, now)),
        host=CASigner(generate_authority("host_ssh", CLUSTER, now)),
    )


@pytest.fixture(scope="module")
def sshd(authorities: Authorities, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    ensure_user(LOGIN)
    workdir = tmp_path_factory.mktemp("sshd")
    key = make_host_key(workdir)
    public = (workdir / (key.name + ".pub")).read_text()
    cert = authorities.host.sign_host_ssh(
        load_ssh_public_key_text(public), NODE, [NODE], datetime.now(UTC) + timedelta(hours=1)
    )
    with run_sshd(
        workdir,
        authorities.user.public_key_text,
        host_key=key,
        host_cert=cert,
        # A permissive sshd: -R binds where asked, so only the proxy keeps it on loopback.
        extra_config="Subsystem sftp /usr/lib/openssh/sftp-server\nGatewayPorts clientspecified",
    ) as server:
        yield server


class LocalCerts:
    """An AgentlessCertSource that signs in process, as auth would."""

    def __init__(self, authorities: Authorities) -> None:
        self._cas = authorities
        self.onward_asked = 0

    async def host_cert(self, node: str, public_key: str) -> Signed:
        expires = datetime.now(UTC) + timedelta(minutes=30)
        cert = self._cas.host.sign_host_ssh(
            load_ssh_public_key_text(public_key), node, [node], expires
        )
        return Signed(cert, expires)

    async def onward_cert(self, presented: str, login: str, node: str, public_key: str) -> Signed:
        self.onward_asked += 1
        now = datetime.now(UTC)
        identity = replace(
            identity_from_ssh_cert(presented), logins=(login,), expires=now + timedelta(minutes=1)
        )
        cert = self._cas.user.sign_user_ssh(
            load_ssh_public_key_text(public_key),
            identity,
            now,
            identity.expires,
            permit_port_forwarding=True,
            permit_agent_forwarding=False,
        )
        return Signed(cert, identity.expires)


@dataclass
class Observed:
    info: SessionInfo
    output: bytearray = field(default_factory=bytearray)
    resizes: list[tuple[int, int]] = field(default_factory=list)
    ended: bool = False

    def on_output(self, data: bytes) -> None:
        self.output += data

    def on_resize(self, width: int, height: int) -> None:
        self.resizes.append((width, height))

    def on_end(self) -> None:
        self.ended = True


@dataclass
class Proxy:
    port: int
    forwarder: AgentlessForwarder
    events: list[tuple[str, dict[str, Any]]]
    observed: list[Observed]
    authorities: Authorities
    view: StubView
    monitor: SessionMonitor

    def creds(
        self,
        roles: tuple[str, ...] = ("ops",),
        user: str = "alice",
        expires: datetime | None = None,
    ) -> Any:
        key = asyncssh.generate_private_key("ssh-ed25519")
        now = datetime.now(UTC)
        identity = Identity(
            username=user,
            roles=roles,
            logins=(LOGIN, "root"),
            expires=expires or now + timedelta(hours=1),
        )
        cert = self.authorities.user.sign_user_ssh(
            load_ssh_public_key_text(key.export_public_key().decode()),
            identity,
            now - timedelta(minutes=1),
            identity.expires,
            permit_port_forwarding=True,
            permit_agent_forwarding=False,
        )
        return [(key, asyncssh.import_certificate(cert))]

    @contextlib.asynccontextmanager
    async def connect(
        self,
        login: str = LOGIN,
        roles: tuple[str, ...] = ("ops",),
        user: str = "alice",
        expires: datetime | None = None,
    ) -> AsyncIterator[asyncssh.SSHClientConnection]:
        keys = self.creds(roles, user, expires)
        known = asyncssh.import_known_hosts(
            f"@cert-authority * {self.authorities.host.public_key_text}\n"
        )
        async with asyncssh.connect(
            "127.0.0.1", self.port, username="jump", client_keys=keys, known_hosts=known,
            config=None, agent_path=None,
        ) as jump:  # fmt: skip
            async with asyncssh.connect(
                NODE, tunnel=jump, username=login, client_keys=keys, known_hosts=known,
                config=None, agent_path=None,
            ) as conn:  # fmt: skip
                yield conn

    async def wait_for(self, event: str, timeout: float = 5) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for name, fields in self.events:
                if name == event:
                    return fields
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {event} event; saw {self.events!r}")


def _role(name: str, port_forwarding: bool, **options: Any) -> Role:
    return Role(
        metadata=Metadata(name=name),
        spec=RoleSpec(
            allow=RoleConditions(logins=[LOGIN], node_labels={"env": "lab"}),
            deny=RoleConditions(logins=["root"]),
            options=RoleOptions(port_forwarding=port_forwarding, **options),
        ),
    )


ROLES = {
    "ops": _role("ops", True),
    "viewer": _role("viewer", False),
    "idle": _role("idle", True, client_idle_timeout=timedelta(seconds=1)),
    "expiring": _role("expiring", True, disconnect_expired_cert=True),
    "strict": _role("strict", True, locking_mode="strict"),
    "mfa": _role("mfa", True, require_session_mfa=True),
    "bind-any": _role("bind-any", True, ssh_remote_bind_any=True),
}


@pytest.fixture
async def proxy(authorities: Authorities, sshd: Sshd) -> AsyncIterator[Proxy]:
    node = Node(
        metadata=Metadata(name=NODE, labels={"env": "lab"}),
        spec=NodeSpec(addr=f"127.0.0.1:{sshd.port}", sub_kind="openssh"),
    )
    view = StubView(
        {
            "role": dict(ROLES),
            "node": {NODE: node},
            "lock": {},
        }
    )
    access = CachedAccess(view, CLUSTER)  # type: ignore[arg-type]
    events: list[tuple[str, dict[str, Any]]] = []
    observed: list[Observed] = []

    async def audit(event: str, **fields: Any) -> None:
        events.append((event, fields))

    def observe(info: SessionInfo) -> Observed:
        if info.command == REFUSE_OBSERVED:
            raise SessionRefused("recording is required and cannot be written")
        seen = Observed(info)
        observed.append(seen)
        return seen

    user_ca = [authorities.user.public_key_text]
    forwarder = AgentlessForwarder(
        user_ca_keys=lambda: user_ca,
        host_ca_keys=lambda: [authorities.host.public_key_text],
        access=access,
        certs=LocalCerts(authorities),
        audit=audit,
        session_observer=observe,
    )
    jump_key = asyncssh.generate_private_key("ssh-ed25519")
    jump_cert = authorities.host.sign_host_ssh(
        load_ssh_public_key_text(jump_key.export_public_key().decode()),
        "proxy",
        ["127.0.0.1"],
        datetime.now(UTC) + timedelta(hours=1),
    )
    jump = ProxySSH(
        host_key=jump_key.export_private_key().decode(),
        host_cert=jump_cert,
        user_ca_keys=lambda: user_ca,
        access=access,
        audit=audit,
        agentless=forwarder,
    )
    port = await jump.start("127.0.0.1", 0)
    # As the proxy process wires it (daemon/process.py): one monitor over the registry.
    monitor = SessionMonitor(forwarder.registry, access, server="proxy", tick=0.05)
    monitor.start()
    try:
        yield Proxy(port, forwarder, events, observed, authorities, view, monitor)
    finally:
        await monitor.close()
        await jump.close()
        await forwarder.close()


async def test_a_pty_session_is_observed_and_listed(proxy: Proxy) -> None:
    async with proxy.connect() as conn:
        process = await conn.create_process(
            "echo observed-$((6*7)); read line; echo got-$line",
            term_type="xterm",
            term_size=(100, 30),
            encoding=None,
        )
        assert b"observed-42" in await process.stdout.readuntil(b"observed-42")
        live = proxy.forwarder.sessions()
        assert [(s.login, s.node, s.tty, s.term_size) for s in live] == [
            (LOGIN, NODE, True, (100, 30))
        ]
        process.change_terminal_size(120, 40)
        process.stdin.write(b"more\n")
        result = await process.wait(timeout=10)
        assert result.exit_status == 0
    seen = proxy.observed[0]
    assert seen.info.node == NODE and seen.info.term == "xterm"
    assert b"observed-42" in seen.output and b"got-more" in seen.output
    assert seen.resizes == [(120, 40)]
    assert seen.ended
    assert proxy.forwarder.sessions() == []
    end = await proxy.wait_for("session.end")
    assert end["node"] == NODE and end["exit_code"] == 0


async def test_exit_signals_and_stderr_come_back(proxy: Proxy) -> None:
    async with proxy.connect() as conn:
        result = await conn.run("echo to-stderr >&2; kill -KILL $$", encoding=None)
        assert result.stderr == b"to-stderr\n"
        assert result.exit_signal is not None and result.exit_signal[0] == "KILL"
        code = await conn.run("exit 42")
        assert code.exit_status == 42
    exec_event = await proxy.wait_for("exec")
    assert exec_event["login"] == LOGIN and exec_event["node"] == NODE


async def test_terminate_sessions_ends_them_with_a_message(proxy: Proxy) -> None:
    async with proxy.connect() as conn:
        process = await conn.create_process("sleep 30", encoding=None)
        await proxy.wait_for("session.start")
        assert len(proxy.forwarder.sessions()) == 1
        ended = await proxy.forwarder.terminate_sessions(
            lambda identity, login: identity.username == "alice", "locked: go away", "locked",
            {"lock": "l1"},
        )  # fmt: skip
        assert ended == 1
        stderr = await asyncio.wait_for(process.stderr.read(), 5)
        assert b"locked: go away" in stderr
    end = await proxy.wait_for("session.end")
    assert end["reason"] == "locked" and end["lock"] == "l1"


async def test_an_observer_may_refuse_a_session(proxy: Proxy) -> None:
    async with proxy.connect() as conn:
        result = await conn.run(REFUSE_OBSERVED)
        assert result.exit_status == 255
        assert "recording is required" in str(result.stderr)
    rejected = await proxy.wait_for("session.rejected")
    assert "recording is required" in rejected["reason"]


async def test_root_and_labels_are_decided_by_the_proxy(proxy: Proxy) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        async with proxy.connect(login="root"):
            pass
    rejected = await proxy.wait_for("session.rejected")
    assert rejected["reason"] == f'access denied to root@{NODE}: login "root" is denied by role ops'
    assert rejected["node"] == NODE


async def test_local_and_remote_forwarding_when_roles_allow(proxy: Proxy) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello from the far side\n")  # speaks first, like an SSH server
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with proxy.connect() as conn:
            reader, writer = await conn.open_connection("127.0.0.1", port, encoding=None)
            assert await reader.readline() == b"hello from the far side\n"
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            writer.close()

            listener = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", port)
            r2, w2 = await asyncio.open_connection("127.0.0.1", listener.get_port())
            assert await r2.readline() == b"hello from the far side\n"
            w2.write(b"pong\n")
            assert await r2.readline() == b"pong\n"
            w2.close()
            listener.close()
    finally:
        server.close()
    forwards = [f for e, f in proxy.events if e == "port_forward"]
    assert {f["kind"] for f in forwards} == {"local", "remote"}
    assert all(f["allowed"] for f in forwards)


async def test_forwarding_is_refused_without_the_role(proxy: Proxy) -> None:
    async with proxy.connect(roles=("viewer",)) as conn:
        with pytest.raises(asyncssh.ChannelOpenError, match="not allowed by your roles"):
            await conn.open_connection("127.0.0.1", 9)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)


async def test_sftp_runs_on_the_sshd(proxy: Proxy, tmp_path: Path) -> None:
    async with proxy.connect() as conn, conn.start_sftp_client() as sftp:
        home = await sftp.realpath(".")
        async with sftp.open("agentless-unit.txt", "w") as f:
            await f.write("through the proxy")
        assert await sftp.exists(f"{home}/agentless-unit.txt")
    owner = subprocess.run(
        ["stat", "-c", "%U", f"{home}/agentless-unit.txt"], capture_output=True, text=True
    )
    assert owner.stdout.strip() == LOGIN


async def test_a_shell_without_a_pty_and_sftp_are_offered_to_the_observer(proxy: Proxy) -> None:
    # The recorder (an observer) decides what record_session records of each: it must be
    # asked for every session, not only those with a pty and commands.
    async with proxy.connect() as conn:
        shell = await conn.run(None, input=b"echo no-pty-$((6*7))\n", encoding=None)
        assert shell.exit_status == 0 and b"no-pty-42" in shell.stdout
        async with conn.start_sftp_client() as sftp:
            await sftp.realpath(".")
    assert [(o.info.kind, o.info.tty) for o in proxy.observed] == [
        ("shell", False),
        ("sftp", False),
    ]
    assert b"no-pty-42" in proxy.observed[0].output


def _agentless_node(sshd: Sshd) -> Node:
    return Node(
        metadata=Metadata(name=NODE, labels={"env": "lab"}),
        spec=NodeSpec(addr=f"127.0.0.1:{sshd.port}", sub_kind="openssh"),
    )


async def test_a_channel_that_never_opens_closes_its_dialled_socket(
    proxy: Proxy, sshd: Sshd
) -> None:
    # The client can hang up while the proxy dials: asyncssh then drops the session
    # open_channel returned without a word to it. The socket to the sshd must not wait
    # for the login timeout (or the garbage collector) to be closed.
    session = await proxy.forwarder.open_channel(_agentless_node(sshd), "127.0.0.1:1")
    ((dialled, _),) = proxy.forwarder._handover.values()
    assert dialled.sock.fileno() != -1
    del session
    gc.collect()
    assert dialled.sock.fileno() == -1
    assert proxy.forwarder._handover == {}


async def test_closing_the_forwarder_closes_sockets_not_yet_taken(proxy: Proxy, sshd: Sshd) -> None:
    session = await proxy.forwarder.open_channel(_agentless_node(sshd), "127.0.0.1:1")
    ((dialled, _),) = proxy.forwarder._handover.values()
    await proxy.forwarder.close()
    assert dialled.sock.fileno() == -1
    del session


class _Unused:
    """An asyncssh connection's stand-in: only its transport matters here."""

    def connection_made(self, transport: Any) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def _dialled_node() -> Node:
    return Node(
        metadata=Metadata(name=NODE), spec=NodeSpec(addr="127.0.0.1:22", sub_kind="openssh")
    )


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("loop_name", [ASYNCIO, UVLOOP])
def test_a_user_hanging_up_while_the_onward_transport_starts_closes_its_socket_once(
    loop_name: str,
) -> None:
    # The user's connection ends (connection_lost closes the dialled socket) while the
    # onward transport is being made on that socket, then the onward task is cancelled.
    # The transport owns the descriptor by then: a close of ours under it made the loop
    # close it again later, or watch a number reused meanwhile, and libuv aborted the
    # proxy on that (SIGABRT in uv__epoll_ctl_flush, seen in CI).
    async def hang_up_mid_start() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        sock = socket.create_connection(listener.getsockname())
        sock.setblocking(False)
        fd = sock.fileno()
        dialled = Dialled(_dialled_node(), sock, 0.0)
        starting = asyncio.create_task(_OnwardTunnel(dialled).create_connection(_Unused, "", 0))
        await asyncio.sleep(0)  # the loop has the descriptor; its transport is not started
        dialled.close()  # what UserConnection.connection_lost does
        assert _is_open(fd), "closed under the transport that owns it"
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        for _ in range(3):  # asyncio's transport closes its socket a step later
            await asyncio.sleep(0)
        assert not _is_open(fd) and sock.fileno() == -1  # closed, by its owner
        listener.close()

    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(hang_up_mid_start())


@pytest.mark.parametrize("loop_name", [ASYNCIO, UVLOOP])
def test_an_onward_transport_that_never_takes_the_socket_leaves_it_closed(
    loop_name: str,
) -> None:
    async def refused() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no stream: refused
        dialled = Dialled(_dialled_node(), sock, 0.0)
        with pytest.raises(ValueError):
            await _OnwardTunnel(dialled).create_connection(_Unused, "", 0)
        assert sock.fileno() == -1

    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(refused())


# ---- the session monitor, as on a node ---------------------------------------------


async def _live(conn: asyncssh.SSHClientConnection) -> Any:
    """`echo READY; exec cat` on the sshd: what is typed comes back."""
    process = await conn.create_process("echo READY; exec cat", encoding=None)
    assert await asyncio.wait_for(process.stdout.readline(), 10) == b"READY\n"
    return process


async def _cut(process: Any) -> str:
    """The stderr of a session that the proxy ends (its input still open)."""
    data: bytes = await asyncio.wait_for(process.stderr.read(), 10)
    return data.decode()


async def _echoes(process: Any, text: bytes) -> bool:
    process.stdin.write(text + b"\n")
    line: bytes = await asyncio.wait_for(process.stdout.readline(), 5)
    return line == text + b"\n"


async def test_a_lock_put_ends_the_targeted_agentless_session(proxy: Proxy) -> None:
    async with (
        proxy.connect(user="lockee") as victim_conn,
        proxy.connect(user="bystander") as other_conn,
    ):
        victim, bystander = await _live(victim_conn), await _live(other_conn)
        lock = Lock(
            metadata=Metadata(name="lk-a"),
            spec=LockSpec(target=LockTarget(user="lockee"), message="incident 42"),
        )
        proxy.view.items["lock"]["lk-a"] = lock
        await proxy.monitor.on_change("lock", "lk-a", lock)
        assert "access denied: locked: incident 42" in await _cut(victim)
        assert await _echoes(bystander, b"still-here")
    ends = [f for e, f in proxy.events if e == "session.end" and f["user"] == "lockee"]
    assert ends and ends[0]["reason"] == "locked" and ends[0]["lock"] == "lk-a"


async def test_a_stale_view_ends_strict_agentless_sessions_only(proxy: Proxy) -> None:
    async with (
        proxy.connect(user="stricty", roles=("strict",)) as strict_conn,
        proxy.connect(user="relaxy") as relaxed_conn,
    ):
        strict, relaxed = await _live(strict_conn), await _live(relaxed_conn)
        proxy.view.silence = 1000
        try:
            assert "this proxy cannot confirm locks with auth" in await _cut(strict)
            assert await _echoes(relaxed, b"unaffected")
        finally:
            proxy.view.silence = 0


async def test_an_idle_agentless_session_ends_and_typing_keeps_it(proxy: Proxy) -> None:
    async with proxy.connect(user="idler", roles=("idle",)) as conn:
        process = await _live(conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3  # three times the timeout, typing all along
        while loop.time() < deadline:
            assert await _echoes(process, b"typing")
            await asyncio.sleep(0.3)
        message = await _cut(process)
        assert "certgate: session ended: no input for 1s (client_idle_timeout of your roles)" in (
            message
        )
    end = await proxy.wait_for("session.end")
    assert end["reason"] == "idle timeout" and end["node"] == NODE


async def test_an_agentless_session_ends_when_its_certificate_expires(proxy: Proxy) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with (
        proxy.connect(user="shortlived", roles=("expiring",), expires=expires) as short_conn,
        proxy.connect(user="outliver", expires=expires) as lasting_conn,
    ):
        short, lasting = await _live(short_conn), await _live(lasting_conn)
        message = await _cut(short)
        assert "your certificate expired at" in message
        assert datetime.now(UTC) >= expires
        # Without disconnect_expired_cert a session outlives its certificate.
        assert await _echoes(lasting, b"after-expiry")


async def test_require_session_mfa_refuses_agentless_sessions(proxy: Proxy) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        async with proxy.connect(roles=("ops", "mfa")):
            pass
    rejected = await proxy.wait_for("session.rejected")
    assert rejected["reason"] == (
        'access denied: role "mfa" requires per-session MFA, '
        "which this cluster does not support yet"
    )
    assert rejected["node"] == NODE


async def _connects(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except OSError:
        return False
    writer.close()
    return True


@pytest.mark.parametrize(("roles", "elsewhere"), [(("ops",), False), (("bind-any",), True)])
async def test_agentless_remote_forwards_listen_on_loopback_unless_allowed(
    proxy: Proxy, roles: tuple[str, ...], elsewhere: bool
) -> None:
    port = free_port()
    async with proxy.connect(roles=roles) as conn:
        listener = await conn.forward_remote_port("0.0.0.0", port, "127.0.0.1", 9)
        try:
            assert await _connects("127.0.0.1", port)
            # 127.0.0.2: another local address, as another interface would be.
            assert await _connects("127.0.0.2", port) is elsewhere
        finally:
            listener.close()
