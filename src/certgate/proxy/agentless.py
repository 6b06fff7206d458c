"""The proxy's SSH server for agentless OpenSSH nodes: it decides, records, connects on.

    ssh -J alice@proxy:3023 ubuntu@web-1        (web-1 is a stock sshd, sub_kind openssh)

    client ══SSH══▶ jump host (sshd.py) ── direct-tcpip "web-1" ──▶ open_channel(node)
      1 dial       TCP to the sshd within 5 s, or the channel is refused naming the node
      2 serve      an asyncssh server runs *on that channel*: the user's SSH session ends
                   here. Its host certificate is the proxy's key signed by auth for
                   "web-1" and "web-1.<cluster>" (one _Front per node, renewed at half-life)
      3 user auth  a certificate of the user CA (captured as on a node) ─▶
                   CachedAccess.check_login(identity, node, labels, login): roles, deny,
                   locks ─▶ SessionPolicy. A refusal fails authentication and is audited
      4 onward     auth signs a certificate for the proxy's own key, for this login only,
                   for a minute, from the certificate the user showed ─▶ asyncssh client
                   over the socket of step 1; the sshd's host certificate must come from
                   the host CA and name "web-1"
      5 channels   sessions (pty, shell, exec, sftp) and -L/-R (if the roles allow) are
                   relayed by agentless_session.py, observed (recording) like a node's,
                   audited with server="proxy"

asyncssh serves a connection over an existing channel through its documented `tunnel`
argument: `listen(tunnel=obj)` calls `obj.create_server(factory, ...)`, and every call
of that factory makes one server connection, which the jump host then hands the
direct-tcpip channel to as its session. No private asyncssh API is used here beyond
certcapture's (the same shims as the node's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncssh
from pydantic import BaseModel

from certgate.api.certs import identity_from_ssh_cert
from certgate.api.identity import Identity
from certgate.api.lock import Lock, lock_matches, lock_message
from certgate.api.node import Node
from certgate.auth.cached_access import CachedAccess
from certgate.errors import AccessDenied, BadParameter, CertgateError
from certgate.node import certcapture
from certgate.node.sshd import (
    DEFAULT_CIPHERS,
    ObserverFactory,
    SessionInfo,
    SessionObserver,
    SessionPolicy,
    SessionPredicate,
    SessionRefused,
)
from certgate.proxy.agentless_certs import AgentlessCertSource
from certgate.proxy.agentless_session import ChannelPipe, RelaySession
from certgate.rpc.audit import AuditSink

log = logging.getLogger("certgate.proxy.agentless")

# From the jump to a working connection to the sshd (TCP, its banner, key exchange,
# authentication): past this the user is told which node did not answer. A little under
# 5 s, so with the client's own handshake the refusal arrives within 5 s.
CONNECT_TIMEOUT = 4.5
LOGIN_TIMEOUT = 30.0
AUDIT_TIMEOUT = 10.0
TERMINATE_FLUSH_SECONDS = 2.0
# The sshd side: AES-GCM first (fastest in asyncssh), then what any sshd offers.
ONWARD_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


class AgentlessForwarder:
    """Serves SSH for agentless nodes on channels the jump host hands over.

    `user_ca_keys()` and `host_ca_keys()` are read for every connection (CA rotation
    needs no restart); `certs` gets certificates from auth; `audit` receives events;
    `session_observer` (optional) is asked for an observer for every pty or exec
    session, as on a node (`SessionInfo.node` names the node).
    """

    def __init__(
        self,
        *,
        user_ca_keys: Callable[[], list[str]],
        host_ca_keys: Callable[[], list[str]],
        access: CachedAccess,
        certs: AgentlessCertSource,
        audit: AuditSink | None,
        session_observer: ObserverFactory | None = None,
        ciphers: Sequence[str] = DEFAULT_CIPHERS,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        certcapture.check_compatible()
        self._user_ca_keys = user_ca_keys
        self._host_ca_keys = host_ca_keys
        self.access = access
        self._certs = certs
        self._audit_sink = audit
        self._observer_factory = session_observer
        self._ciphers = list(ciphers)
        self.connect_timeout = connect_timeout
        # One key presented to users (certified per node), one shown to the sshds.
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._host_public = self._host_key.export_public_key().decode().strip()
        self._onward_key = asyncssh.generate_private_key("ssh-ed25519")
        self.onward_public = self._onward_key.export_public_key().decode().strip()
        self._fronts: dict[str, _Front] = {}
        self._front_builds: dict[str, asyncio.Task[_Front]] = {}
        self._handover: dict[Any, _Dialled] = {}
        self._connections: set[_UserConnection] = set()
        self._sessions: dict[str, RelaySession] = {}
        self._audit_queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._audit_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """End every connection and flush the audit queue."""
        for connection in list(self._connections):
            connection.abort()
        for front in self._fronts.values():
            front.acceptor.close()
        self._fronts.clear()
        if self._audit_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._audit_queue.join(), AUDIT_TIMEOUT)
            self._audit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._audit_task
            self._audit_task = None

    # ------------------------------------------------------------------ the jump host's call

    async def open_channel(self, node: Node, client_addr: str) -> asyncssh.SSHTCPSession[bytes]:
        """The session for a direct-tcpip channel to agentless `node`: an SSH server.

        Raises ChannelOpenError with a reason naming the node when the sshd cannot be
        reached or auth cannot certify the proxy for it.
        """
        started = time.monotonic()
        sock = await self._dial(node)
        try:
            front = await self._front(node.name)
        except CertgateError as exc:
            sock.close()
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                f'cannot serve node "{node.name}": auth did not certify the proxy for it: '
                f"{exc.message}",
            ) from None
        conn = front.new_connection()
        dialled = _Dialled(node, sock, started + self.connect_timeout)
        self._handover[conn] = dialled
        # If the jump host's channel never opens after all, nobody takes the socket.
        asyncio.get_running_loop().call_later(LOGIN_TIMEOUT, self._drop_handover, conn)
        return conn  # type: ignore[no-any-return]

    def _drop_handover(self, conn: Any) -> None:
        dialled = self._handover.pop(conn, None)
        if dialled is not None:
            dialled.sock.close()

    async def _dial(self, node: Node) -> socket.socket:
        host, _, port = node.spec.addr.rpartition(":")
        reason = f'node "{node.name}" at {node.spec.addr} is unreachable'
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM),
                self.connect_timeout,
            )
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, addr), self.connect_timeout)
            except BaseException:
                sock.close()
                raise
        except (TimeoutError, OSError, ValueError, IndexError) as exc:
            log.warning("%s: %s", reason, exc)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    async def _front(self, name: str) -> _Front:
        front = self._fronts.get(name)
        if front is not None and front.fresh():
            return front
        build = self._front_builds.get(name)
        if build is None:
            build = asyncio.create_task(self._build_front(name), name=f"agentless front {name}")
            self._front_builds[name] = build
            build.add_done_callback(lambda _: self._front_builds.pop(name, None))
        try:
            return await asyncio.shield(build)
        except CertgateError:
            if front is not None and front.valid():
                return front  # auth is away: the certificate still has time left
            raise

    async def _build_front(self, name: str) -> _Front:
        signed = await self._certs.host_cert(name, self._host_public)
        try:
            cert = asyncssh.import_certificate(signed.certificate)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise BadParameter(f"auth sent a malformed host certificate: {exc}") from exc
        tunnel = _ChannelTunnel()
        acceptor = await asyncssh.listen(
            tunnel=tunnel,
            server_factory=lambda: _UserConnection(self),
            server_host_keys=[(self._host_key, cert)],
            encryption_algs=self._ciphers,
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            encoding=None,
            line_editor=False,
            allow_pty=True,
            x11_forwarding=False,
            agent_forwarding=False,
            allow_scp=False,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=30,
            keepalive_count_max=3,
            server_version="certgate",
            config=None,
        )
        assert tunnel.factory is not None
        front = _Front(tunnel.factory, acceptor, datetime.now(UTC), signed.expires)
        old = self._fronts.get(name)
        self._fronts[name] = front
        if old is not None:
            old.acceptor.close()  # live connections stay; new ones get the new certificate
        return front

    def forget_node(self, name: str) -> None:
        """The node changed or went away: its next connection gets a fresh front."""
        front = self._fronts.pop(name, None)
        if front is not None:
            front.acceptor.close()

    # ------------------------------------------------------------------ sessions

    def sessions(self) -> list[SessionInfo]:
        """The sessions running now."""
        return [s.info for s in self._sessions.values() if s.info is not None]

    async def terminate_sessions(
        self,
        predicate: SessionPredicate,
        message: str,
        reason: str = "terminated",
        audit_fields: dict[str, Any] | None = None,
        node: str | None = None,
    ) -> int:
        """End the live sessions whose (identity, login) match — on `node` only, if
        given — showing `message` first; their connections are closed too (nothing,
        not a port forward, survives a lock). Returns how many sessions ended."""
        victims = [
            c
            for c in list(self._connections)
            if c.identity is not None
            and (node is None or c.node_name == node)
            and predicate(c.identity, c.login)
        ]
        ended = sum(c.terminate(message, reason, audit_fields or {}) for c in victims)
        if victims:
            await asyncio.gather(*(c.hang_up() for c in victims))
        return ended

    def end_session(self, session_id: str, message: str, reason: str = "terminated") -> bool:
        """End one live session, showing `message` first; False if it is not running."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        session.terminate(message, reason)
        return True

    async def apply_lock(self, lock: Lock) -> int:
        """End the sessions a new lock targets (user, role, login, node...)."""
        now = datetime.now(UTC)
        victims = [
            c
            for c in list(self._connections)
            if c.identity is not None
            and lock_matches(
                lock,
                user=c.identity.username,
                roles=c.identity.roles,
                request_ids=c.identity.request_ids,
                login=c.login,
                node=c.node_name,
                now=now,
            )
        ]
        message = lock_message(lock)
        ended = sum(c.terminate(message, "locked", {"lock": lock.name}) for c in victims)
        if victims:
            await asyncio.gather(*(c.hang_up() for c in victims))
        return ended

    async def on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        """A ResourceView callback: locks end sessions, node changes renew fronts."""
        if kind == "lock" and isinstance(resource, Lock):
            ended = await self.apply_lock(resource)
            if ended:
                log.info("lock %s ended %d agentless session(s)", name, ended)
        elif kind == "node":
            self.forget_node(name)

    # ------------------------------------------------------------------ internals

    def _take_handover(self, conn: Any) -> _Dialled | None:
        return self._handover.pop(conn, None)

    def _audit(self, event: str, fields: dict[str, Any]) -> None:
        if self._audit_sink is None:
            return
        if self._audit_task is None:
            self._audit_task = asyncio.create_task(self._audit_worker(), name="agentless audit")
        self._audit_queue.put_nowait((event, fields))

    async def _audit_worker(self) -> None:
        while True:
            event, fields = await self._audit_queue.get()
            try:
                if self._audit_sink is not None:
                    await asyncio.wait_for(
                        self._audit_sink(event, server="proxy", **fields), AUDIT_TIMEOUT
                    )
            except Exception:
                log.exception("audit sink failed for %s event", event)
            finally:
                self._audit_queue.task_done()

    def _observer_for(self, info: SessionInfo) -> SessionObserver | None:
        if self._observer_factory is None:
            return None
        try:
            return self._observer_factory(info)
        except SessionRefused:
            raise
        except Exception:
            log.exception("session observer factory failed for session %s", info.id)
            return None

    def _trusted_user_cas(self) -> tuple[frozenset[bytes], str]:
        """(key blobs, authorized_keys text) of the user CA, read now."""
        blobs: set[bytes] = set()
        lines: list[str] = []
        try:
            keys = self._user_ca_keys()
        except Exception:
            log.exception("could not read the trusted user CA keys")
            keys = []
        for line in keys:
            fields = line.split()
            if len(fields) < 2:
                continue
            try:
                key = asyncssh.import_public_key(f"{fields[0]} {fields[1]}")
            except (asyncssh.KeyImportError, ValueError):
                continue
            blobs.add(bytes(key.public_data))
            lines.append(f'cert-authority,principals="*" {fields[0]} {fields[1]}')
        return frozenset(blobs), "\n".join(lines)

    def _known_hosts(self) -> Any:
        lines = [
            f"@cert-authority * {' '.join(line.split()[:2])}"
            for line in self._host_ca_keys()
            if len(line.split()) >= 2
        ]
        return asyncssh.import_known_hosts("\n".join(lines) + "\n")

    async def _onward_credentials(
        self, presented: str, login: str, node: str
    ) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        signed = await self._certs.onward_cert(presented, login, node, self.onward_public)
        try:
            cert = asyncssh.import_certificate(signed.certificate)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise BadParameter(f"auth sent a malformed user certificate: {exc}") from exc
        return self._onward_key, cert


@dataclass
class _Dialled:
    node: Node
    sock: socket.socket
    deadline: float  # time.monotonic() by which the sshd must have let us in
    given: bool = False  # handed to asyncssh, which closes it from then on

    def close(self) -> None:
        if not self.given:
            self.sock.close()


@dataclass
class _Front:
    """The in-process SSH server users meet for one node, under its host certificate."""

    factory: Callable[[str, int], Any]
    acceptor: Any
    issued: datetime
    expires: datetime

    def fresh(self) -> bool:
        return datetime.now(UTC) < self.issued + (self.expires - self.issued) / 2

    def valid(self) -> bool:
        return datetime.now(UTC) < self.expires

    def new_connection(self) -> Any:
        return self.factory("", 0)


class _ChannelTunnel:
    """What asyncssh's `listen(tunnel=...)` takes: it hands us its connection factory."""

    def __init__(self) -> None:
        self.factory: Callable[[str, int], Any] | None = None

    async def create_server(
        self, session_factory: Callable[[str, int], Any], listen_host: str, listen_port: int
    ) -> asyncssh.SSHListener:
        self.factory = session_factory
        return asyncssh.SSHListener()  # nothing listens: connections come from open_channel

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class _UserConnection(asyncssh.SSHServer):
    """One user's SSH connection to an agentless node, and the proxy's to its sshd."""

    def __init__(self, forwarder: AgentlessForwarder) -> None:
        self._forwarder = forwarder
        self._conn: Any = None
        self._dialled: _Dialled | None = None
        self._trusted: frozenset[bytes] = frozenset()
        self._authorized_keys = ""
        self.client_addr = ""
        self.node_name = ""
        self.identity: Identity | None = None
        self.login = ""
        self._presented = ""
        self.policy = SessionPolicy()
        self.sessions: set[RelaySession] = set()
        self._onward_task: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._onward: asyncssh.SSHClientConnection | None = None
        self._onward_refusal_audited = False

    # ---- asyncssh callbacks ----------------------------------------------------

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        self._dialled = self._forwarder._take_handover(conn)
        peer = conn.get_extra_info("peername")
        self.client_addr = f"{peer[0]}:{peer[1]}" if peer else ""
        if self._dialled is None:  # never happens: open_channel registers every connection
            conn.abort()
            return
        self.node_name = self._dialled.node.name
        self._trusted, self._authorized_keys = self._forwarder._trusted_user_cas()
        certcapture.install_certificate_capture(conn, self._certificate_verified)
        self._forwarder._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forwarder._connections.discard(self)
        if self._onward_task is not None and not self._onward_task.done():
            self._onward_task.cancel()
        if self._onward is not None:
            self._onward.close()
        if self._dialled is not None and self._onward_task is None:
            self._dialled.close()

    def begin_auth(self, username: str) -> bool:
        # principals="*": asyncssh would refuse a login that is not a principal
        # silently; `_certificate_verified` checks it and audits the refusal.
        if self._authorized_keys:
            self._conn.set_authorized_keys(asyncssh.import_authorized_keys(self._authorized_keys))
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: Any) -> bool:
        return False  # only certificates from the user CA

    def validate_ca_key(self, username: str, key: Any) -> bool:
        return bytes(key.public_data) in self._trusted

    def session_requested(self) -> Any:
        if self.identity is None:
            return False
        return self._open_session()

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        allowed = self.policy.port_forwarding
        self._audit_forward("local", f"{dest_host}:{dest_port}", allowed)
        if not allowed:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "port forwarding is not allowed by your roles",
            )
        return self._open_direct(dest_host, dest_port, orig_host, orig_port)

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        allowed = self.policy.port_forwarding
        self._audit_forward("remote", f"{listen_host}:{listen_port}", allowed)
        if not allowed:
            return False
        return self._open_remote(listen_host, listen_port)

    # ---- authentication --------------------------------------------------------

    async def _certificate_verified(self, login: str, key_data: bytes) -> bool:
        assert self._dialled is not None
        node = self._dialled.node
        try:
            presented = certcapture.certificate_text(key_data)
            identity = identity_from_ssh_cert(presented)
        except (BadParameter, ValueError) as exc:
            self._reject(None, login, f"malformed certificate: {exc}")
            return False
        # The roles first: their refusal names the rule ("denied by role dev"), which
        # says more than the certificate lacking the login (it lacks it for that reason).
        try:
            role_set = self._forwarder.access.check_login(
                identity, node.name, dict(node.metadata.labels), login
            )
        except AccessDenied as exc:
            self._reject(identity, login, exc.message)
            return False
        except Exception:
            log.exception("authorizing %s as %s on %s failed", identity.username, login, node.name)
            self._reject(identity, login, "internal error while authorizing")
            return False
        if login not in identity.logins:
            self._reject(identity, login, f'login "{login}" is not a principal of the certificate')
            return False
        options = role_set.options()
        self.identity, self.login, self._presented = identity, login, presented
        # Agents are not relayed to agentless nodes (the sshd would need the socket).
        self.policy = SessionPolicy(port_forwarding=options.port_forwarding, forward_agent=False)
        # Connect on now: the sshd's handshake overlaps the client's session request.
        self._onward_task = asyncio.create_task(
            self._connect_onward(), name=f"agentless onward {node.name}"
        )
        self._onward_task.add_done_callback(_retrieve)
        return True

    def _reject(self, identity: Identity | None, login: str, reason: str) -> None:
        user = identity.username if identity is not None else ""
        log.info(
            "refused %s as %s on %s from %s: %s",
            user or "?", login, self.node_name, self.client_addr, reason,
        )  # fmt: skip
        self.audit(
            "session.rejected",
            {"user": user, "login": login, "reason": reason, "client_addr": self.client_addr},
        )

    # ---- the connection to the sshd --------------------------------------------

    async def _connect_onward(self) -> asyncssh.SSHClientConnection:
        dialled = self._dialled
        assert dialled is not None and self.identity is not None
        node = dialled.node
        remaining = max(dialled.deadline - time.monotonic(), 0.5)
        try:
            key, cert = await asyncio.wait_for(
                self._forwarder._onward_credentials(self._presented, self.login, node.name),
                remaining,
            )
            options = await asyncssh.SSHClientConnectionOptions.construct(
                config=None,
                client_factory=lambda: _OnwardClient(self),
                username=self.login,
                client_keys=[(key, cert)],
                agent_path=None,
                known_hosts=self._forwarder._known_hosts(),
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
            dialled.given = True
            conn = await asyncio.wait_for(
                asyncssh.connect(sock=dialled.sock, config=None, options=options), remaining
            )
        except BaseException as exc:
            dialled.close()
            if not isinstance(exc, Exception):
                raise
            raise self._onward_error(exc) from None
        self._onward = conn
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
            self._reject(self.identity, self.login, reason)
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

    async def _open_session(self) -> RelaySession:
        return RelaySession(self, await self.onward())

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

    async def _open_remote(self, listen_host: str, listen_port: int) -> Any:
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
            listener = await onward.create_server(incoming, listen_host, listen_port, encoding=None)
        except (asyncssh.Error, OSError):
            return False
        bound = listener.get_port() or listen_port
        return listener

    # ---- helpers for RelayContext ------------------------------------------------

    def audit(self, event: str, fields: dict[str, Any]) -> None:
        self._forwarder._audit(event, {**fields, "node": self.node_name})

    def observer_for(self, info: SessionInfo) -> SessionObserver | None:
        return self._forwarder._observer_for(info)

    def session_started(self, session: RelaySession) -> None:
        self.sessions.add(session)
        self._forwarder._sessions[session.id] = session

    def session_ended(self, session: RelaySession) -> None:
        self.sessions.discard(session)
        self._forwarder._sessions.pop(session.id, None)

    def _audit_forward(self, kind: str, addr: str, allowed: bool) -> None:
        self.audit(
            "port_forward",
            {
                "user": self.identity.username if self.identity else "",
                "login": self.login,
                "client_addr": self.client_addr,
                "kind": kind,
                "addr": addr,
                "allowed": allowed,
            },
        )

    # ---- termination -------------------------------------------------------------

    def terminate(self, message: str, reason: str, audit_fields: dict[str, Any]) -> int:
        sessions = list(self.sessions)
        for session in sessions:
            session.terminate(message, reason, audit_fields)
        return len(sessions)

    async def hang_up(self) -> None:
        """Close the connection once the sessions' last words had a chance to leave."""
        waits = [session.wait_closed() for session in self.sessions]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), TERMINATE_FLUSH_SECONDS)
        if self._onward is not None:
            self._onward.close()
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._conn.wait_closed(), TERMINATE_FLUSH_SECONDS)

    def abort(self) -> None:
        if self._onward is not None:
            self._onward.abort()
        if self._conn is not None:
            self._conn.abort()


class _OnwardClient(asyncssh.SSHClient):
    def __init__(self, user: _UserConnection) -> None:
        self._user = user

    def connection_lost(self, exc: Exception | None) -> None:
        self._user.onward_lost()


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The outcome is read by whoever awaits `onward()`; a connection that never opens a
    # channel must not leave "exception was never retrieved" behind.
    if not task.cancelled():
        task.exception()
