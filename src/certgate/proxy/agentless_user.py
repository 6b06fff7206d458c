"""One user's SSH connection to an agentless node, served by the proxy (agentless.py).

authenticate  the user's certificate (user CA, captured) ─▶ the forwarder's Authorizer
              for the node (srv/authorize.py: roles, deny, locks, per-session MFA on the
              node's labels, then the principal) ─▶ SessionPolicy, in the same order and
              with the same refusals as a node; refusals fail auth and are audited
onward        a one-minute certificate for the login from auth ─▶ asyncssh client on
              the socket open_channel dialled; the sshd's host certificate must be
              the host CA's for the node's name. Started the moment the user is in,
              so the sshd's handshake overlaps the client's session request
channels      session ─▶ RelaySession; -L ─▶ direct-tcpip on the sshd; -R ─▶
              tcpip-forward on the sshd, each connection back as forwarded-tcpip
              (agentless_session.py), forwarding only if the policy allows
join          login "join:<mode>:<session id>" ─▶ that live session's party (srv/join.py)
              if the joiner's roles and locks allow; no onward connection, nothing else
terminate     the user is a LiveClient in the forwarder's registry: the session monitor
              (srv/monitor.py) or an admin ends its sessions with a message, then hangs up
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import asyncssh

from certgate.api.certs import identity_from_ssh_cert
from certgate.api.identity import Identity
from certgate.api.node import Node
from certgate.api.session_tracker import parse_join_login
from certgate.errors import BadParameter, CertgateError
from certgate.proxy.agentless_session import ChannelPipe, RelaySession
from certgate.srv import certcapture
from certgate.srv.authorize import LoginRefused, authorize_join, check_login
from certgate.srv.certificate_login import CertificateLogin
from certgate.srv.corked import CorkedTunnel
from certgate.srv.hangup import close_connection
from certgate.srv.live import LiveClient
from certgate.srv.session import SessionPolicy
from certgate.srv.user_cas import UserCAKeys

if TYPE_CHECKING:
    from certgate.proxy.agentless import AgentlessForwarder

log = logging.getLogger("certgate.proxy.agentless")

# The sshd side: AES-GCM first (fastest in asyncssh), then what any sshd offers.
ONWARD_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


@dataclass
class Dialled:
    """The sshd connection open_channel made, waiting for its user to authenticate."""

    node: Node
    sock: socket.socket
    deadline: float  # time.monotonic() by which the sshd must have let us in
    given: bool = False  # the event loop's transport owns it, and closes it from then on

    def close(self) -> None:
        if not self.given:
            self.sock.close()


class UserConnection(CertificateLogin):
    """One user's SSH connection to an agentless node, and the proxy's to its sshd."""

    def __init__(self, forwarder: AgentlessForwarder) -> None:
        super().__init__(forwarder.registry, log)
        self._forwarder = forwarder
        self._dialled: Dialled | None = None
        self.node_name = ""
        self._presented = ""
        self._onward_task: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._onward: asyncssh.SSHClientConnection | None = None
        self._onward_refusal_audited = False
        self._lost = False

    def user_cas(self) -> UserCAKeys:
        return self._forwarder.trusted_user_cas()

    def audit(self, event: str, fields: dict[str, Any]) -> None:
        self._forwarder.audit(event, {**fields, "node": self.node_name})

    def describe_target(self) -> str:
        return f" on {self.node_name}"

    # ---- asyncssh callbacks ----------------------------------------------------

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        self._dialled = self._forwarder.take_handover(conn)
        peer = conn.get_extra_info("peername")
        self.client_addr = f"{peer[0]}:{peer[1]}" if peer else ""
        if self._dialled is None:  # never happens: open_channel registers every connection
            conn.abort()
            return
        self.node_name = self._dialled.node.name
        certcapture.install_certificate_capture(conn, self._certificate_verified)
        certcapture.reuse_trusted_certificates(conn)
        self._forwarder.add_connection(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._forwarder.remove_connection(self)
        super().connection_lost(exc)
        if self._onward_task is not None and not self._onward_task.done():
            # A task cancelled before its first step never runs its own cleanup.
            self._onward_task.cancel()
        if self._onward is not None:
            self._onward.close()
        if self._dialled is not None:
            self._dialled.close()  # unless asyncssh's transport owns it by now

    def session_requested(self) -> Any:
        client = self.client
        if client is None:
            return False
        if self.join is not None:
            return self.join_channel(client)
        return self._open_session(client)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        self.check_local_forward(dest_host, dest_port)
        return self._open_direct(dest_host, dest_port, orig_host, orig_port)

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        # The sshd's own GatewayPorts would decide otherwise; ask it for what the roles
        # allow, so a permissive sshd config does not widen them.
        bind = self.remote_forward_bind(listen_host, listen_port)
        if bind is None:
            return False
        return self._open_remote(listen_host, bind, listen_port)

    # ---- authentication --------------------------------------------------------

    async def _certificate_verified(self, login: str, key_data: bytes) -> bool:
        assert self._dialled is not None
        node = self._dialled.node
        try:
            presented = certcapture.certificate_text(key_data)
            identity = identity_from_ssh_cert(presented)
        except (BadParameter, ValueError) as exc:
            self.refuse(None, login, f"malformed certificate: {exc}")
            return False
        join = parse_join_login(login)
        if join is not None:
            return self._authorize_join(identity, login, *join)
        forwarder = self._forwarder
        try:
            policy = await check_login(
                forwarder.authorizer_for(node), identity, login, self.client_addr
            )
        except LoginRefused as exc:
            self.refuse(identity, login, exc.reason)
            return False
        self._presented = presented
        # Agents are not relayed to agentless nodes (the sshd would need the socket).
        self._admit(identity, login, replace(policy, forward_agent=False))
        # Connect on now: the sshd's handshake overlaps the client's session request.
        self._onward_task = asyncio.create_task(
            self._connect_onward(), name=f"agentless onward {node.name}"
        )
        self._onward_task.add_done_callback(_retrieve)
        return True

    def _admit(self, identity: Identity, login: str, policy: SessionPolicy) -> None:
        self.client = LiveClient(
            identity=identity,
            login=login,
            target=self.node_name,
            client_addr=self.client_addr,
            policy=policy,
            audit=self.audit,
            close=self._hang_up,
        )
        self._forwarder.registry.add_client(self.client)

    def _authorize_join(self, identity: Identity, login: str, mode: str, session_id: str) -> bool:
        """A join login: the session must run on this node, and the roles allow `mode`."""
        session = self._forwarder.registry.session(session_id)
        if session is not None and session.info.node != self.node_name:
            session = None  # joined through the node it runs on, nowhere else

        def authorize() -> SessionPolicy:
            assert session is not None
            owner = session.info.identity
            return authorize_join(self._forwarder.access, identity, owner, mode, self.node_name)

        party = session.party if session is not None else None
        policy = self.accept_join(identity, login, mode, session_id, party, authorize)
        if policy is None:
            return False
        self._admit(identity, login, policy)
        return True

    # ---- the connection to the sshd --------------------------------------------

    async def _connect_onward(self) -> asyncssh.SSHClientConnection:
        dialled = self._dialled
        assert dialled is not None and self.identity is not None
        node = dialled.node
        remaining = max(dialled.deadline - time.monotonic(), 0.5)
        tunnel: _OnwardTunnel | None = None
        try:
            async with asyncio.timeout(remaining):
                key, cert = await self._forwarder.onward_credentials(
                    self._presented, self.login, node.name
                )
            options = await asyncssh.SSHClientConnectionOptions.construct(
                config=None,
                client_factory=lambda: _OnwardClient(self),
                username=self.login,
                client_keys=[(key, cert)],
                agent_path=None,
                known_hosts=self._forwarder.known_hosts(),
                host_key_alias=node.name,
                preferred_auth="publickey",
                gss_kex=False,
                gss_auth=False,
                encryption_algs=list(ONWARD_CIPHERS),
                keepalive_interval=30,
                keepalive_count_max=3,
                client_version="certgate-proxy",
            )
            remaining = max(dialled.deadline - time.monotonic(), 0.5)
            tunnel = _OnwardTunnel(dialled)
            async with asyncio.timeout(remaining):
                conn = await asyncssh.connect(tunnel=tunnel, config=None, options=options)
        except BaseException as exc:
            dialled.close()
            if tunnel is not None and tunnel.conn is not None:
                tunnel.conn.abort()  # made, but the wait ended first: nobody else has it
            if not isinstance(exc, Exception):
                raise
            raise self._onward_error(exc) from None
        self._onward = conn
        if self._lost:  # the user left as the sshd let us in (a cancel can come late)
            conn.close()
        return conn

    def _onward_error(self, exc: Exception) -> asyncssh.ChannelOpenError:
        """A failure of the onward connection, as the user will read it."""
        assert self._dialled is not None
        node = self._dialled.node
        where = f'sshd of node "{node.name}" at {node.spec.addr}'
        if isinstance(exc, TimeoutError):
            reason = f"{where} did not answer in time"
        elif isinstance(exc, CertgateError):
            reason = f"auth refused a certificate for {self.login}@{node.name}: {exc.message}"
        elif isinstance(exc, asyncssh.HostKeyNotVerifiable):
            reason = (
                f"{where} has no host certificate from this cluster for "
                f'"{node.name}": install one made by cgctl auth sign --host={node.name}'
            )
        elif isinstance(exc, asyncssh.PermissionDenied):
            reason = (
                f'{where} refused the login "{self.login}": check that it trusts the user '
                "CA (TrustedUserCAKeys, from cgctl auth export --type=user) and that the "
                "Unix user exists"
            )
        elif isinstance(exc, asyncssh.Error | OSError):
            reason = f"{where} closed the connection: {exc}"
        else:
            log.error("onward connection to %s failed", node.name, exc_info=exc)
            reason = f"internal error connecting to {where}"
        return self._onward_failed(reason)

    def _onward_failed(self, reason: str) -> asyncssh.ChannelOpenError:
        if not self._onward_refusal_audited:
            self._onward_refusal_audited = True
            log.info("agentless onward connection failed: %s", reason)
            self.refuse(self.identity, self.login, reason)
        return asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason)

    async def onward(self) -> asyncssh.SSHClientConnection:
        assert self._onward_task is not None
        return await asyncio.shield(self._onward_task)

    def onward_lost(self) -> None:
        """The sshd hung up: nothing this connection does can go on.

        Only once it was up: a connection that failed to open is reported to the user
        by the channel it was opened for (`_onward_error`), not by hanging up.
        """
        if self._onward is None:
            return
        self._onward = None
        if self._conn is not None:
            self._conn.close()

    async def _open_session(self, client: LiveClient) -> RelaySession:
        return RelaySession(client, self._forwarder, await self.onward())

    async def _open_direct(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> ChannelPipe:
        onward = await self.onward()
        user_end, sshd_end = ChannelPipe.pair()
        try:
            await onward.create_connection(
                lambda: sshd_end, dest_host, dest_port, orig_host, orig_port, encoding=None
            )
        except asyncssh.ChannelOpenError:
            raise
        except (asyncssh.Error, OSError) as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        return user_end

    async def _open_remote(self, listen_host: str, bind: str, listen_port: int) -> Any:
        """-R: the sshd listens on `bind`; its connections come back to the user named
        by `listen_host`, the address the user asked for."""
        onward = await self.onward()

        async def incoming(orig_host: str, orig_port: int) -> ChannelPipe:
            user_end, sshd_end = ChannelPipe.pair()
            try:
                await self._conn.create_connection(
                    lambda: user_end, listen_host, bound, orig_host, orig_port, encoding=None
                )
            except (asyncssh.Error, OSError) as exc:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
            return sshd_end

        try:
            listener = await onward.create_server(incoming, bind, listen_port, encoding=None)
        except (asyncssh.Error, OSError):
            return False
        bound = listener.get_port() or listen_port
        return listener

    # ---- termination -------------------------------------------------------------

    async def _hang_up(self) -> None:
        """LiveClient's close: the sshd's connection, then the user's."""
        if self._onward is not None:
            self._onward.close()
        await close_connection(self._conn)

    def abort(self) -> None:
        if self._onward is not None:
            self._onward.abort()
        if self._conn is not None:
            self._conn.abort()


class _OnwardTunnel(CorkedTunnel):
    """The tunnel on the dialled socket; it hands the socket to the event loop's
    transport (asyncssh may fail or be cancelled before that, and then the socket is
    still ours)."""

    def __init__(self, dialled: Dialled) -> None:
        super().__init__(dialled.sock)
        self._dialled = dialled
        self.conn: Any = None

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[Any, Any]:
        # Given before the await, not after: while the loop waits for its transport to
        # start, that transport watches the descriptor already, and closes it if the
        # wait is cancelled. A close of ours meanwhile (the user hanging up) closed the
        # descriptor under it: the loop then closed it a second time, or watched a
        # number reused by another file, and libuv aborts the whole process on that.
        self._dialled.given = True
        try:
            transport, conn = await super().create_connection(
                session_factory, remote_host, remote_port
            )
        except BaseException:
            if self._dialled.sock.fileno() != -1:  # failed before the loop took it
                self._dialled.sock.close()
            raise
        self.conn = conn
        return transport, conn


class _OnwardClient(asyncssh.SSHClient):
    def __init__(self, user: UserConnection) -> None:
        self._user = user

    def connection_lost(self, exc: Exception | None) -> None:
        self._user.onward_lost()


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The outcome is read by whoever awaits `onward()`; a connection that never opens a
    # channel must not leave "exception was never retrieved" behind.
    if not task.cancelled():
        task.exception()
