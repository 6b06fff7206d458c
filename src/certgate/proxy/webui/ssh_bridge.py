"""The web terminal's SSH side: a client connection from the proxy to the node, with
the web session's own key and certificate, so the node authenticates, enforces and
records it exactly as it does `cgsh ssh` (the proxy decides nothing the node would not).

    browser <-WebSocket-> terminal.py <-> NodeShell: asyncssh client -> node:3022 (PTY shell)

An agentless (OpenSSH) node trusts the user CA itself, so dialling its sshd with the
session's certificate would skip the proxy's checks and recording. Such a node is reached
the way `cgsh ssh` reaches it instead: through this proxy's own jump host (sshd.py, on
loopback), whose agentless forwarder decides, records and audits, then connects on:

    NodeShell -> jump host 127.0.0.1:3023 -- direct-tcpip "web-1" --> agentless.py -> sshd
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh

from certgate.api.node import Node
from certgate.errors import AccessDenied, ConnectionProblem
from certgate.proxy.webui.sessions import WebSession

DIAL_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 30


class NodeShell:
    """One interactive shell on a node; output goes to `on_output`, the end to `on_exit`."""

    def __init__(
        self,
        on_output: Callable[[bytes], Awaitable[None]],
        on_exit: Callable[[str], Awaitable[None]],
    ) -> None:
        self._on_output = on_output
        self._on_exit = on_exit
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jump: asyncssh.SSHClientConnection | None = None  # agentless nodes only
        self._process: Any = None
        self._pump: asyncio.Task[None] | None = None

    async def open(
        self,
        session: WebSession,
        node: Node | None,
        login: str,
        cols: int,
        rows: int,
        jump: tuple[str, int] | None = None,
    ) -> None:
        """Open the shell; `jump` is this proxy's SSH listener, for agentless nodes and
        for `node` None: a Kubernetes session's view, which the proxy itself serves."""
        where = node.name if node is not None else "this proxy"
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                self._conn = await self._connect(session, node, login, jump)
            self._process = await self._conn.create_process(
                term_type="xterm-256color", term_size=(cols, rows), encoding=None
            )
        except asyncssh.PermissionDenied as exc:
            await self.close()
            raise AccessDenied(f"access denied to {login}@{where}: {exc.reason}") from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            await self.close()
            reason = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
            raise ConnectionProblem(f'"{where}" refused the session: {reason}') from None
        self._pump = asyncio.create_task(self._read(), name=f"web-terminal {where}")

    async def _connect(
        self, session: WebSession, node: Node | None, login: str, jump: tuple[str, int] | None
    ) -> asyncssh.SSHClientConnection:
        key = asyncssh.import_private_key(session.key_pem)
        cert = asyncssh.import_certificate(session.bundle.ssh_cert)
        options: dict[str, Any] = {
            "config": None,
            "client_keys": [(key, cert)],
            "agent_path": None,
            # The host CA: a node's own certificate, the proxy's, and the certificate the
            # proxy presents for an agentless node all come from it.
            "known_hosts": asyncssh.import_known_hosts(session.bundle.known_hosts + "\n"),
            "preferred_auth": "publickey",
            "gss_auth": False,
            "gss_kex": False,
            "keepalive_interval": KEEPALIVE_INTERVAL,
            "client_version": "certgate-web",
        }
        if node is None:
            if jump is None:
                raise ConnectionProblem("this proxy serves no SSH listener to watch from")
            # The proxy reads the join login and serves the kube service's view.
            return await asyncssh.connect(jump[0], jump[1], username=login, **options)
        if node.spec.sub_kind != "openssh":
            host, _, port = node.spec.addr.rpartition(":")
            return await asyncssh.connect(
                host, int(port), username=login, host_key_alias=node.name, **options
            )
        if jump is None:
            raise ConnectionProblem(f'node "{node.name}" is an agentless node: no jump host here')
        # The jump host takes any user name (the login is checked on the far side).
        self._jump = await asyncssh.connect(jump[0], jump[1], username="certgate", **options)
        return await asyncssh.connect(
            node.name, 22, tunnel=self._jump, username=login, host_key_alias=node.name, **options
        )

    async def _read(self) -> None:
        reason = "the session ended"
        try:
            while True:
                data = await self._process.stdout.read(65536)
                if not data:
                    break
                try:
                    await self._on_output(data)
                except ConnectionError:
                    break  # the browser went away
            await self._process.wait_closed()
            status = self._process.exit_status
            message = self._process.exit_signal
            if message:
                reason = f"the session ended: {message[2] or message[0]}"
            elif status is not None:
                reason = f"the session ended (exit status {status})"
        except (asyncssh.Error, OSError) as exc:
            reason = f"the session ended: {getattr(exc, 'reason', '') or exc}"
        await self._on_exit(reason)

    def write(self, data: bytes) -> None:
        if self._process is not None:
            self._process.stdin.write(data)

    def resize(self, cols: int, rows: int) -> None:
        if self._process is not None:
            self._process.change_terminal_size(cols, rows)

    def hang_up(self) -> None:
        """End the session now (the pump then reports the end through on_exit)."""
        if self._conn is not None:
            self._conn.close()

    async def close(self) -> None:
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        for conn in (self._conn, self._jump):
            if conn is not None:
                conn.close()
                await conn.wait_closed()
        self._conn = self._jump = None
