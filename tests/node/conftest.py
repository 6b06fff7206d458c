"""Fixtures for the node SSH server: Unix test users, CAs, certificates, a live server.

The server runs on its own event loop in a background thread, so the tests can drive
real OpenSSH clients (`ssh`, `scp`, pexpect) with ordinary blocking calls. One server
serves the whole session; what a login may do comes from the roles in its certificate
(see `authorize`), so tests need no shared mutable policy.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from certgate.api.identity import Identity
from certgate.auth.ca import CASigner, generate_authority
from certgate.errors import AccessDenied
from certgate.node.sshd import NodeSSHServer
from certgate.srv.session import SessionInfo, SessionPolicy

T = TypeVar("T")

ALICE = "cgtalice"
BOB = "cgtbob"
EXTRA_GROUP = "cgtextra"
CLUSTER = "node-test.example"

# Roles the test authorizer understands.
ROLE_BLOCKED = "blocked"  # refused with BLOCKED_REASON
ROLE_FORWARD = "forward"  # port forwarding allowed
ROLE_AGENT = "agent"  # agent forwarding allowed
BLOCKED_REASON = "access denied: role blocked forbids this node"

needs_openssh = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ssh") is None or shutil.which("useradd") is None,
    reason="needs root, OpenSSH client and useradd",
)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _remove_users() -> None:
    for name in (ALICE, BOB):
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
    subprocess.run(["groupdel", EXTRA_GROUP], capture_output=True)


@pytest.fixture(scope="session")
def unix_users() -> Iterator[dict[str, pwd.struct_passwd]]:
    """Two throwaway accounts; ALICE is also in EXTRA_GROUP."""
    if os.geteuid() != 0:
        pytest.fail("creating Unix users needs root: run the suite as root (make test does)")
    _remove_users()  # left over from an interrupted run
    _run("groupadd", EXTRA_GROUP)
    _run("useradd", "-m", "-s", "/bin/bash", "-G", EXTRA_GROUP, ALICE)
    _run("useradd", "-m", "-s", "/bin/bash", BOB)
    for name in (ALICE, BOB):
        # A password-less useradd account is "locked" ("!"); "*" is "no password".
        _run("usermod", "-p", "*", name)
    try:
        yield {name: pwd.getpwnam(name) for name in (ALICE, BOB)}
    finally:
        _remove_users()


@dataclass
class Authorities:
    user: CASigner
    other: CASigner  # a CA the node does not trust
    host: CASigner
    user_ca_lines: list[str]


@pytest.fixture(scope="session")
def authorities() -> Authorities:
    now = datetime.now(UTC)
    user = generate_authority("user_ssh", CLUSTER, now)
    return Authorities(
        user=CASigner(user),
        other=CASigner(generate_authority("user_ssh", "elsewhere.example", now)),
        host=CASigner(generate_authority("host_ssh", CLUSTER, now)),
        user_ca_lines=[key.public for key in user.spec.active_keys],
    )


@dataclass
class UserCreds:
    key: Path
    cert: Path
    identity: Identity

    def ssh_options(self) -> list[str]:
        return [
            "-i",
            str(self.key),
            "-o",
            f"CertificateFile={self.cert}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-F",
            "/dev/null",
        ]


CredsFactory = Callable[..., UserCreds]


@pytest.fixture(scope="session")
def make_creds(authorities: Authorities, tmp_path_factory: pytest.TempPathFactory) -> CredsFactory:
    """make_creds(username, logins, roles=(), signer=None, valid=(start, end)) -> UserCreds."""
    directory = tmp_path_factory.mktemp("creds")
    counter = iter(range(1_000_000))

    def make(
        username: str,
        logins: tuple[str, ...],
        roles: tuple[str, ...] = (),
        *,
        signer: CASigner | None = None,
        valid: tuple[datetime, datetime] | None = None,
    ) -> UserCreds:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        now = datetime.now(UTC)
        start, end = valid or (now - timedelta(minutes=5), now + timedelta(hours=1))
        identity = Identity(username=username, roles=roles, logins=logins, expires=end)
        cert = (signer or authorities.user).sign_user_ssh(
            public.decode(),
            identity,
            start,
            end,
            permit_port_forwarding=True,
            permit_agent_forwarding=True,
        )
        n = next(counter)
        key_path = directory / f"id_{n}"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        cert_path = directory / f"id_{n}-cert.pub"
        cert_path.write_text(cert + "\n")
        return UserCreds(key_path, cert_path, identity)

    return make


@dataclass
class Recorder:
    """A session observer that keeps everything it is told."""

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
class Node:
    """The running server, its port, and what it reported."""

    server: NodeSSHServer
    port: int
    loop: asyncio.AbstractEventLoop
    events: list[tuple[str, dict[str, Any]]]
    recorders: list[Recorder]

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run a coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in list(self.events) if event == name]

    def wait_for_event(
        self, name: str, match: Callable[[dict[str, Any]], bool], timeout: float = 5
    ) -> dict[str, Any]:
        """The first `name` event that matches, waiting for the audit queue to drain."""
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        while datetime.now(UTC) < deadline:
            for fields in self.events_named(name):
                if match(fields):
                    return fields
            threading.Event().wait(0.02)
        raise AssertionError(f"no {name} event matched; saw {self.events!r}")

    def event_for_user(self, name: str, user: str) -> dict[str, Any]:
        """The first `name` event about certificate user `user`."""
        return self.wait_for_event(name, lambda fields: bool(fields.get("user") == user))

    def ssh_argv(
        self, creds: UserCreds, login: str, *command: str, options: tuple[str, ...] = ()
    ) -> list[str]:
        """An OpenSSH client command line for login@node running `command`."""
        return [
            "ssh",
            "-p",
            str(self.port),
            *creds.ssh_options(),
            *options,
            f"{login}@127.0.0.1",
            *command,
        ]


async def authorize(identity: Identity, login: str, client_addr: str) -> SessionPolicy:
    if ROLE_BLOCKED in identity.roles:
        raise AccessDenied(BLOCKED_REASON)
    return SessionPolicy(
        port_forwarding=ROLE_FORWARD in identity.roles,
        forward_agent=ROLE_AGENT in identity.roles,
    )


@pytest.fixture(scope="session")
def node(unix_users: dict[str, pwd.struct_passwd], authorities: Authorities) -> Iterator[Node]:
    if shutil.which("ssh") is None:
        pytest.fail("needs the OpenSSH client: make test installs openssh-client")
    events: list[tuple[str, dict[str, Any]]] = []
    recorders: list[Recorder] = []

    async def audit(event: str, fields: dict[str, Any]) -> None:
        events.append((event, fields))

    def observe(info: SessionInfo) -> Recorder:
        recorder = Recorder(info)
        recorders.append(recorder)
        return recorder

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

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="node-sshd", daemon=True)
    thread.start()

    async def build() -> tuple[NodeSSHServer, int]:
        server = NodeSSHServer(
            host_key_pem,
            host_cert,
            lambda: authorities.user_ca_lines,
            authorize,
            audit,
            "node-1",
            session_observer=observe,
        )
        return server, await server.start("127.0.0.1", 0)

    server, port = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
    running = Node(server, port, loop, events, recorders)
    try:
        yield running
    finally:
        running.call(server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
