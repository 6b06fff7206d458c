"""The node's SSH server (port 3022): certificate logins, sessions as local Unix users.

    ssh client ──▶ NodeSSHServer (asyncssh, one _Connection per client)
      auth     asyncssh checks the user certificate (trusted CA, validity, principal =
               login, source-address); certcapture hands us the certificate that signed
               ──▶ identity ──▶ authorizer(identity, login, client_addr) ──▶ SessionPolicy
               (AccessDenied ──▶ auth fails, audit "session.rejected")
      session  shell / exec / exec with pty / sftp subsystem ──▶ session.spawn() as the
               Unix user, through its login shell (`shell -c sftp-server` for sftp, as
               sshd); bytes relayed between the channel and the child's raw fds
      forward  -L (direct-tcpip), -R (tcpip-forward), agent ──▶ only if the policy says so
      join     login "join:<mode>:<session id>" ──▶ join_authorizer(identity, owner, mode)
               ──▶ the joiner's own SessionPolicy (idle timeout, certificate expiry; no
               forwarding) ──▶ a JoinChannel in that session's party (join.py), nothing else
      trackers terminal sessions and their joiners are reported to `tracking`
      audit    session.rejected, session.start, session.end, session.join,
               session.leave, exec, port_forward, agent_forward; delivered in order
               by one worker so a slow sink never stalls a session

How the node joins the cluster, where the CA keys come from and what the authorizer
checks (roles, labels, locks) belong to the caller; this module only enforces answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import asyncssh

from certgate.api.identity import Identity
from certgate.api.session_tracker import parse_join_login
from certgate.errors import AccessDenied, BadParameter, NotFound
from certgate.node.accounts import AccountCache
from certgate.node.session import (
    HANG_UP_AFTER,
    HANG_UP_SPREAD,
    SFTP_SERVER,
    ChildProcess,
    UnixAccount,
    login_environment,
    shell_argv,
    signal_by_name,
    signal_name,
    spawn,
)
from certgate.node.spawner import Spawner
from certgate.srv import certcapture
from certgate.srv.audit_queue import AuditSink, AuditWriter, BatchSink, audit_writer
from certgate.srv.authorize import AUTHORIZE_TIMEOUT, LoginRefused, check_login
from certgate.srv.certificate_login import CertificateLogin
from certgate.srv.corked import CorkedListener
from certgate.srv.join import SessionParty
from certgate.srv.live import LiveClient, LiveSession
from certgate.srv.registry import SessionRegistry
from certgate.srv.server_options import DEFAULT_CIPHERS, certificate_server_options
from certgate.srv.session import (
    Authorizer,
    JoinAuthorizer,
    ObserverFactory,
    SessionInfo,
    SessionPolicy,
    SessionPredicate,
    SessionRefused,
    SessionTracking,
)
from certgate.srv.session_channel import SessionChannel
from certgate.srv.user_cas import TrustedUserCAs, UserCAKeys

log = logging.getLogger(__name__)


def _format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NodeSSHServer:
    """The SSH server of a node.

    `trusted_user_ca_keys()` is called for every new connection, so rotating the user
    CA needs no restart. `authorizer` decides each login; `audit` receives events;
    `session_observer` (optional) is asked for an observer for every session.
    Live sessions and clients are kept in `registry` (srv/registry.py), which the
    node's session monitor (srv/monitor.py) cuts.
    """

    def __init__(
        self,
        host_key: bytes | str,
        host_cert: bytes | str,
        trusted_user_ca_keys: Callable[[], list[str]],
        authorizer: Authorizer,
        audit: AuditWriter | AuditSink | None,
        node_name: str,
        *,
        session_observer: ObserverFactory | None = None,
        audit_batch: BatchSink | None = None,
        join_authorizer: JoinAuthorizer | None = None,
        tracking: SessionTracking | None = None,
        registry: SessionRegistry | None = None,
        ciphers: Sequence[str] = DEFAULT_CIPHERS,
        authorize_timeout: float = AUTHORIZE_TIMEOUT,
    ) -> None:
        # Fail at construction, not at the first login, if asyncssh changed under us.
        certcapture.check_compatible()
        try:
            self._host_key = asyncssh.import_private_key(host_key)
            self._host_cert = asyncssh.import_certificate(host_cert)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise BadParameter(f"node host key or certificate is malformed: {exc}") from exc
        self._user_cas = TrustedUserCAs(trusted_user_ca_keys)
        self._authorizer = authorizer
        self._accounts = AccountCache()
        self._audit_queue = audit_writer(audit, "node-audit", audit_batch)
        self.node_name = node_name
        self._observer_factory = session_observer
        self._join_authorizer = join_authorizer
        self.tracking = tracking
        self.registry = registry or SessionRegistry()
        self._ciphers = list(ciphers)
        self._authorize_timeout = authorize_timeout
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[_Connection] = set()
        self.spawner: Spawner | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "0.0.0.0", port: int = 3022) -> int:
        """Listen on host:port (0 picks a free port); returns the bound port."""
        spawner = Spawner()
        try:
            spawner.start()
        except OSError as exc:
            log.warning("no spawn helper (%s): every session forks the node", exc)
        else:
            self.spawner = spawner
        # Corked: the packets one pass of the loop makes leave in one send (corked.py).
        self._acceptor = await asyncssh.listen(
            host,
            port,
            tunnel=CorkedListener(),
            server_factory=lambda: _Connection(self),
            server_host_keys=[(self._host_key, self._host_cert)],
            encryption_algs=self._ciphers,
            # Decided per connection by the policy (certcapture.guard_agent_forwarding).
            **certificate_server_options(agent_forwarding=True),
        )
        return int(self._acceptor.get_port())

    async def close(self) -> None:
        """Stop listening, end every session and connection, flush the audit queue."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        # Abort before waiting: the listener's wait_closed() can wait for every open
        # connection, and a client that never hangs up would stall shutdown.
        for connection in list(self._connections):
            connection.abort()
        if acceptor is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await acceptor.wait_closed()
        await self._audit_queue.close()
        spawner, self.spawner = self.spawner, None
        if spawner is not None:
            await asyncio.to_thread(spawner.close)

    # ------------------------------------------------------------------ sessions

    def sessions(self) -> list[SessionInfo]:
        """The sessions running now."""
        return self.registry.sessions()

    async def terminate_sessions(
        self,
        predicate: SessionPredicate,
        message: str,
        reason: str = "terminated",
        audit_fields: dict[str, Any] | None = None,
    ) -> int:
        """End the live sessions whose (identity, login) match, showing `message` first.

        The matching clients' connections are closed too, so nothing else (a second
        session on a multiplexed connection, a port forward) survives a lock.
        `reason` (and `audit_fields`) go into each session.end event.
        Returns how many sessions were ended.
        """
        return await self.registry.terminate_sessions(predicate, message, reason, audit_fields)

    def party(self, session_id: str) -> SessionParty | None:
        """The joiners' side of a live terminal session, if it is running here."""
        return self.registry.party(session_id)

    def end_session(self, session_id: str, message: str, reason: str = "terminated") -> bool:
        """End one live session, showing `message` first; False if it is not running.

        For observers that cannot go on (a recording that must be written and cannot).
        """
        return self.registry.end_session(session_id, message, reason)

    # ------------------------------------------------------------------ internals

    def _audit(self, event: str, fields: dict[str, Any]) -> None:
        # No "node" field: the sink knows which node it serves and adds it.
        self._audit_queue.put(event, fields)


class _Connection(CertificateLogin):
    """One client connection: its authentication and what it was allowed."""

    def __init__(self, node: NodeSSHServer) -> None:
        super().__init__(node.registry, log)
        self._node = node
        self.account: UnixAccount | None = None

    def user_cas(self) -> UserCAKeys:
        return self._node._user_cas.current()

    def audit(self, event: str, fields: dict[str, Any]) -> None:
        self._node._audit(event, fields)

    # ---- asyncssh callbacks --------------------------------------------------

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.client_addr = _format_addr(str(peer[0]), int(peer[1])) if peer else ""
        certcapture.install_certificate_capture(conn, self._certificate_verified)
        certcapture.reuse_trusted_certificates(conn)
        certcapture.skip_config_reload(conn)
        certcapture.skip_ignore_packets(conn)
        certcapture.guard_agent_forwarding(conn, self._allow_agent, self._agent_socket_created)
        self._node._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._node._connections.discard(self)
        super().connection_lost(exc)

    def session_requested(self) -> Any:
        client = self.client
        if client is not None and self.join is not None:
            return self.join_channel(client)
        if client is None or self.account is None:
            return False
        return _Session(self, client, self.account)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        self.check_local_forward(dest_host, dest_port)
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        # The listener is opened by this (root) process: only root may ask for a
        # privileged port, as with sshd.
        privileged = 0 < listen_port < 1024
        root = self.account is not None and self.account.uid == 0
        bind = self.remote_forward_bind(listen_host, listen_port, allowed=root or not privileged)
        if bind is None:
            return False
        if bind == listen_host:
            return True
        # Listen on loopback, but report the address the client asked for: its
        # forwarded-tcpip channels name it, and a cancel names it (sshd does the same).
        return self._conn.forward_local_port(bind, listen_port, listen_host, listen_port)

    # ---- authentication ------------------------------------------------------

    async def _certificate_verified(self, login: str, key_data: bytes) -> bool:
        node = self._node
        try:
            identity = certcapture.certificate_identity(key_data)
        except (BadParameter, ValueError) as exc:
            self.refuse(None, login, f"malformed certificate: {exc}")
            return False
        join = parse_join_login(login)
        if join is not None:
            return self._authorize_join(identity, login, *join)
        try:
            policy = await check_login(
                node._authorizer, identity, login, self.client_addr, node._authorize_timeout
            )
            account = node._accounts.lookup(login)
        except LoginRefused as exc:
            self.refuse(identity, login, exc.reason)
            return False
        except NotFound as exc:
            self.refuse(identity, login, exc.message)
            return False
        self.account = account
        self._admit(identity, login, policy)
        return True

    def _admit(self, identity: Identity, login: str, policy: SessionPolicy) -> None:
        node = self._node
        self.client = LiveClient(
            identity=identity,
            login=login,
            target=node.node_name,
            client_addr=self.client_addr,
            policy=policy,
            audit=node._audit,
            conn=self._conn,
        )
        node.registry.add_client(self.client)

    def _authorize_join(self, identity: Identity, login: str, mode: str, session_id: str) -> bool:
        """A join login: the session must run here and the joiner's roles allow `mode`."""
        node = self._node
        session = node.registry.session(session_id)

        def authorize() -> SessionPolicy:
            if node._join_authorizer is None:
                raise AccessDenied("joining sessions is not enabled on this node")
            assert session is not None
            return node._join_authorizer(identity, session.info, mode)

        party = session.party if session is not None else None
        policy = self.accept_join(identity, login, mode, session_id, party, authorize)
        if policy is None:
            return False
        self._admit(identity, login, policy)
        return True

    # ---- forwarding ----------------------------------------------------------

    def _allow_agent(self) -> bool:
        allowed = self.policy.forward_agent and self.account is not None
        self.audit(
            "agent_forward",
            {
                "user": self.client.identity.username if self.client else "",
                "login": self.login,
                "client_addr": self.client_addr,
                "allowed": allowed,
            },
        )
        return allowed

    def _agent_socket_created(self, path: str) -> None:
        # asyncssh makes the socket in a root-only temporary directory; the session's
        # programs run as the login and must be able to reach it.
        assert self.account is not None
        for item in (os.path.dirname(path), path):
            os.chown(item, self.account.uid, self.account.gid)

    # ---- shutdown ------------------------------------------------------------

    def abort(self) -> None:
        if self.client is not None:
            for session in list(self.client.sessions):
                io = session.io
                if isinstance(io, _Session):
                    io.kill()
        if self._conn is not None:
            self._conn.abort()


class _Session(SessionChannel):
    """One session channel: its request, its child process and the relay between them.

    The I/O of a LiveSession (srv/live.py), which owns the rest of its life; it is also
    the child's ProcessSink (session.ChildProcess calls output/exited).
    """

    def __init__(self, connection: _Connection, client: LiveClient, account: UnixAccount) -> None:
        super().__init__(client)
        self._node = connection._node
        self._account = account
        self._child: ChildProcess | None = None
        self._exit_code: int | None = None

    # ---- requests ------------------------------------------------------------

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp" or not os.access(SFTP_SERVER, os.X_OK):
            return False
        self._kind = "sftp"
        return True

    def session_started(self) -> None:
        size = self._term_size
        client = self._client
        info = self.session_info(shell=self._account.shell)
        node = self._node
        core = self.core = LiveSession(
            client,
            info,
            self,
            node.registry,
            observe=node._observer_factory,
            tracking=node.tracking,
            peer_input=self._peer_input,
        )
        try:
            # Asked before the child exists: a session refused by its observer
            # (SessionRefused) never runs anything.
            core.open_observer()
            self._child = self._spawn(size)
        except Exception as exc:
            if isinstance(exc, SessionRefused):
                core.refused(str(exc))
            else:
                log.exception("could not start %s session %s", self._kind, self.id)
                core.ended("failed")  # never started: no session.end without a start
            with contextlib.suppress(OSError):
                self._chan.write_stderr(f"certgate: cannot start session: {exc}\r\n".encode())
                self._chan.exit(127)
            return
        core.begin()
        core.announce({"pid": self._child.pid})

    def _spawn(self, size: tuple[int, int, int, int] | None) -> ChildProcess:
        account = self._account
        env = login_environment(
            account,
            client_env=self._chan.get_environment(),
            term=self._term,
            extra=self._session_env(),
        )
        # A subsystem runs through the login's shell, as sshd runs it: an account whose
        # shell refuses logins (nologin, /bin/false) gets no file access either.
        command = SFTP_SERVER if self._kind == "sftp" else self._command
        executable, argv = shell_argv(account, command)
        return spawn(
            account, executable, argv, env, self, pty_size=size, spawner=self._node.spawner
        )

    def _session_env(self) -> dict[str, str]:
        env = {"CERTGATE_USER": self._client.identity.username, "CERTGATE_SESSION_ID": self.id}
        peer = self._chan.get_extra_info("peername")
        local = self._chan.get_extra_info("sockname")
        if peer and local:
            env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} {local[1]}"
            env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
        agent = self._chan.get_agent_path()
        if agent:
            env["SSH_AUTH_SOCK"] = str(agent)
        if self._command is not None:
            env["SSH_ORIGINAL_COMMAND"] = self._command
        return env

    # ---- channel → child -----------------------------------------------------

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.core is not None:
            self.core.input()
        if self._child is not None and not self._child.write_stdin(data):
            # The child is not keeping up: stop reading the channel, which stops
            # window adjusts, which makes the client wait (end-to-end back pressure).
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        if self._child is not None:
            self._child.close_stdin()
        return True  # keep the channel open for the child's remaining output

    def resize_target(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._child is not None:
            self._child.resize(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        signum = signal_by_name(signal)
        if signum is not None and self._child is not None:
            self._child.signal(signum)

    def break_received(self, msec: int) -> bool:
        return False

    def pause_writing(self) -> None:
        if self._child is not None:
            self._child.pause_output()

    def resume_writing(self) -> None:
        if self._child is not None:
            self._child.resume_output()

    def connection_lost(self, exc: Exception | None) -> None:
        core = self.core
        reason = core.end_reason if core is not None else "exited"
        if self._child is not None and self._exit_code is None:
            self._child.terminate()
            if reason == "exited":
                reason = "disconnected"
        if core is not None:
            core.ended(reason, self._exit_fields())
            core.closed()

    # ---- child → channel (ProcessSink) ----------------------------------------

    def output(self, data: bytes, stderr: bool) -> None:
        try:
            if stderr:
                self._chan.write_stderr(data)
            else:
                self._chan.write(data)
        except OSError:
            # The channel is closing (client went away or we terminated it).
            if self._child is not None:
                self._child.terminate()
            return
        if self.core is not None:
            self.core.output(data)

    def _peer_input(self, data: bytes) -> None:
        if self._child is not None and self._exit_code is None:
            self._child.write_stdin(data)

    def stdin_drained(self) -> None:
        self._chan.resume_reading()

    def exited(self, returncode: int) -> None:
        self._exit_code = returncode
        if self.core is not None:
            if returncode >= 0:
                self.core.exec_finished(returncode)
            else:  # killed by a signal: named, as OpenSSH's exit-signal does
                self.core.exec_finished(None, signal_name(-returncode))
        with contextlib.suppress(OSError):
            if returncode >= 0:
                self._chan.exit(returncode)
            else:
                self._chan.exit_with_signal(signal_name(-returncode))
        if self.core is not None:
            self.core.ended("exited", self._exit_fields())

    def _exit_fields(self) -> dict[str, Any]:
        if self._exit_code is None:
            return {}
        if self._exit_code < 0:
            return {"exit_signal": signal_name(-self._exit_code)}
        return {"exit_code": self._exit_code}

    # ---- SessionIO (what the core asks of us) ------------------------------------

    def stop(self) -> None:
        """Close the channel (close() flushes what the window allows), stop the child's
        job at once, and hang up on it a little later.

        A lock cuts a thousand sessions in one pass: their jobs are frozen (SIGSTOP)
        in that pass, and each is hung up (SIGHUP, SIGCONT) HANG_UP_AFTER to
        HANG_UP_AFTER + HANG_UP_SPREAD seconds later, so the shells' exits neither
        compete with the cut itself (here and at the proxy) nor all run at once."""
        self._chan.close()
        if self._child is not None and self._exit_code is None:
            self._child.freeze()
        delay = HANG_UP_AFTER + random.uniform(0, HANG_UP_SPREAD)
        asyncio.get_running_loop().call_later(delay, self._hang_up_child)

    def _hang_up_child(self) -> None:
        if self._child is not None and self._exit_code is None:
            self._child.terminate()

    def kill(self) -> None:
        """Server shutdown: no goodbyes."""
        if self._child is not None:
            self._child.close()
        if self.core is not None:
            self.core.ended("node shutting down", self._exit_fields())
