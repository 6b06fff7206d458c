"""The proxy's SSH server for agentless OpenSSH nodes: it decides, records, connects on.

    ssh -J alice@proxy:3023 ubuntu@web-1        (web-1 is a stock sshd, sub_kind openssh)

    client ══SSH══▶ jump host (sshd.py) ── direct-tcpip "web-1" ──▶ open_channel(node)
      1 dial       TCP to the sshd within 5 s, or the channel is refused naming the node
      2 serve      an asyncssh server runs *on that channel*: the user's SSH session ends
                   here. Its host certificate is the proxy's key signed by auth for
                   "web-1" and "web-1.<cluster>" (one _Front per node, renewed at half-life)
      3 user auth  a certificate of the user CA (captured as on a node) ─▶ the node's
                   Authorizer (srv/authorize.py, as on a node: roles, deny, locks,
                   per-session MFA, then the principal) ─▶ SessionPolicy. A refusal
                   fails authentication and is audited
      4 onward     auth signs a certificate for the proxy's own key, for this login only,
                   for a minute, from the certificate the user showed ─▶ asyncssh client
                   over the socket of step 1; the sshd's host certificate must come from
                   the host CA and name "web-1"
      5 channels   sessions (pty, shell, exec, sftp) and -L/-R (if the roles allow) are
                   relayed by agentless_session.py; the session core (srv/live.py) records,
                   tracks and audits them (server="proxy") as on a node, and the proxy's
                   session monitor (srv/monitor.py) cuts them as a node's monitor does

asyncssh serves a connection over an existing channel through its documented `tunnel`
argument: `listen(tunnel=obj)` calls `obj.create_server(factory, ...)`, and every call
of that factory makes one server connection, which the jump host then hands the
direct-tcpip channel to as its session (through corked.ChannelTransport). No private
asyncssh API is used here beyond certcapture's (the same shims as the node's).

    agentless.py          AgentlessForwarder: dial, fronts, the registry of live sessions, audit
    agentless_user.py     UserConnection: steps 3 and 4, and which channel goes where
    agentless_session.py  the session and port-forward relays of step 5
    agentless_certs.py    certificates from auth, cached
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncssh
from pydantic import BaseModel

from certgate.access.cached_access import CachedAccess
from certgate.api.node import Node
from certgate.errors import BadParameter, CertgateError, what_broke
from certgate.proxy.agentless_certs import AgentlessCertSource
from certgate.proxy.agentless_user import Dialled, UserConnection
from certgate.rpc.audit import AuditSink
from certgate.srv import certcapture
from certgate.srv.audit_queue import AuditSink as EventSink
from certgate.srv.audit_queue import AuditWriter, BatchSink, audit_writer
from certgate.srv.authorize import access_authorizer
from certgate.srv.corked import ChannelTransport
from certgate.srv.join import SessionParty
from certgate.srv.registry import SessionRegistry
from certgate.srv.server_options import DEFAULT_CIPHERS, LOGIN_TIMEOUT, certificate_server_options
from certgate.srv.session import (
    Authorizer,
    ObserverFactory,
    SessionInfo,
    SessionPredicate,
    SessionTracking,
)
from certgate.srv.user_cas import TrustedUserCAs, UserCAKeys

log = logging.getLogger("certgate.proxy.agentless")

# From the jump to a working connection to the sshd (TCP, its banner, key exchange,
# authentication): past this the user is told which node did not answer. A little under
# 5 s, so with the client's own handshake the refusal arrives within 5 s.
CONNECT_TIMEOUT = 4.5


class AgentlessForwarder:
    """Serves SSH for agentless nodes on channels the jump host hands over.

    `user_ca_keys()` and `host_ca_keys()` are read for every connection (CA rotation
    needs no restart); `certs` gets certificates from auth; `audit` receives events;
    `session_observer` (optional) is asked for an observer for every pty or exec
    session, as on a node (`SessionInfo.node` names the node); `tracking` (optional)
    hears of terminal sessions and their joiners, as on a node. Live sessions and
    clients are kept in `registry`, which the proxy's session monitor cuts.
    `authorizer_for(node)` is the login Authorizer for a node (by default the same as a
    node's own, from `access`).
    """

    def __init__(
        self,
        *,
        user_ca_keys: Callable[[], list[str]],
        host_ca_keys: Callable[[], list[str]],
        access: CachedAccess,
        certs: AgentlessCertSource,
        audit: AuditWriter | AuditSink | None,
        session_observer: ObserverFactory | None = None,
        tracking: SessionTracking | None = None,
        audit_batch: BatchSink | None = None,
        registry: SessionRegistry | None = None,
        authorizer_for: Callable[[Node], Authorizer] | None = None,
        ciphers: Sequence[str] = DEFAULT_CIPHERS,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        certcapture.check_compatible()
        self._user_cas = TrustedUserCAs(user_ca_keys)
        self._host_ca_keys = host_ca_keys
        self.access = access
        self._certs = certs
        # Every event names the proxy as the server that decided (a writer's events
        # reach auth from the proxy's identity, and auth stamps it).
        self._audit_queue = audit_writer(
            audit if audit is None or isinstance(audit, AuditWriter) else _as_proxy(audit),
            "agentless audit",
            None if audit_batch is None else _batch_as_proxy(audit_batch),
        )
        self.observer_factory = session_observer
        self.tracking = tracking
        self.registry = registry or SessionRegistry()
        self._authorizer_for = authorizer_for
        self._ciphers = list(ciphers)
        self.connect_timeout = connect_timeout
        # One key presented to users (certified per node), one shown to the sshds.
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._host_public = self._host_key.export_public_key().decode().strip()
        self._onward_key = asyncssh.generate_private_key("ssh-ed25519")
        self.onward_public = self._onward_key.export_public_key().decode().strip()
        self._fronts: dict[str, _Front] = {}
        self._front_builds: dict[str, asyncio.Task[_Front]] = {}
        # Dialled sockets waiting for their connection (see open_channel), with the
        # timer that closes them if it never comes.
        self._handover: dict[Any, tuple[Dialled, asyncio.TimerHandle]] = {}
        self._connections: set[UserConnection] = set()

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """End every connection and flush the audit queue."""
        for connection in list(self._connections):
            connection.abort()
        for conn in list(self._handover):
            self._drop_handover(conn)
        for front in self._fronts.values():
            front.acceptor.close()
        self._fronts.clear()
        await self._audit_queue.close()

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
            conn = front.new_connection()
        except CertgateError as exc:
            sock.close()
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                f'cannot serve node "{node.name}": auth did not certify the proxy for it: '
                f"{exc.message}",
            ) from None
        except BaseException:  # cancelled: the client hung up while we waited for auth
            sock.close()
            raise
        dialled = Dialled(node, sock, started + self.connect_timeout)
        timer = asyncio.get_running_loop().call_later(LOGIN_TIMEOUT, self._drop_handover, conn)
        self._handover[conn] = (dialled, timer)
        session = ChannelTransport(conn)
        # If the channel never opens after all (the client hung up while we dialled),
        # asyncssh drops the session without telling it, and nobody takes the socket:
        # close it then, not at the timer.
        weakref.finalize(session, self._drop_handover, conn)
        return session

    def _drop_handover(self, conn: Any) -> None:
        entry = self._handover.pop(conn, None)
        if entry is not None:
            dialled, timer = entry
            timer.cancel()
            dialled.close()

    async def _dial(self, node: Node) -> socket.socket:
        host, _, port = node.spec.addr.rpartition(":")
        reason = f'node "{node.name}" at {node.spec.addr} is unreachable'
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await loop.sock_connect(sock, addr)
            except BaseException:
                sock.close()
                raise
        except (TimeoutError, OSError, ValueError, IndexError) as exc:
            log.warning("%s: %s", reason, what_broke(exc))
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
            server_factory=lambda: UserConnection(self),
            server_host_keys=[(self._host_key, cert)],
            encryption_algs=self._ciphers,
            **certificate_server_options(agent_forwarding=False, allow_scp=False, config=None),
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
        """The sessions running now (of agentless nodes)."""
        return [info for info in self.registry.sessions() if info.node]

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
        return await self.registry.terminate_sessions(
            predicate, message, reason, audit_fields, target=node
        )

    def party(self, session_id: str) -> SessionParty | None:
        """The joiners' side of a live terminal session served here (srv/join.py)."""
        return self.registry.party(session_id)

    def end_session(self, session_id: str, message: str, reason: str = "terminated") -> bool:
        """End one live session, showing `message` first; False if it is not running."""
        return self.registry.end_session(session_id, message, reason)

    def authorizer_for(self, node: Node) -> Authorizer:
        """The login Authorizer for `node`: the node's own rules, decided here."""
        if self._authorizer_for is not None:
            return self._authorizer_for(node)
        return access_authorizer(self.access, node.name, node.metadata.labels)

    async def on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        """A ResourceView callback: node changes renew fronts (locks are the session
        monitor's, srv/monitor.py)."""
        if kind == "node":
            self.forget_node(name)

    # ------------------------------------------------------------------ for UserConnection

    def add_connection(self, connection: UserConnection) -> None:
        self._connections.add(connection)

    def remove_connection(self, connection: UserConnection) -> None:
        self._connections.discard(connection)

    def take_handover(self, conn: Any) -> Dialled | None:
        entry = self._handover.pop(conn, None)
        if entry is None:
            return None
        dialled, timer = entry
        timer.cancel()
        return dialled

    def audit(self, event: str, fields: dict[str, Any]) -> None:
        self._audit_queue.put(event, fields)

    def trusted_user_cas(self) -> UserCAKeys:
        """The user CA's key blobs and authorized_keys, read now (parsed when changed)."""
        return self._user_cas.current()

    def known_hosts(self) -> Any:
        lines = [
            f"@cert-authority * {' '.join(line.split()[:2])}"
            for line in self._host_ca_keys()
            if len(line.split()) >= 2
        ]
        return asyncssh.import_known_hosts("\n".join(lines) + "\n")

    async def onward_credentials(
        self, presented: str, login: str, node: str
    ) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        signed = await self._certs.onward_cert(presented, login, node, self.onward_public)
        try:
            cert = asyncssh.import_certificate(signed.certificate)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise BadParameter(f"auth sent a malformed user certificate: {exc}") from exc
        return self._onward_key, cert


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


def _as_proxy(sink: AuditSink) -> EventSink:
    async def send(event: str, fields: dict[str, Any]) -> None:
        await sink(event, server="proxy", **fields)

    return send


def _batch_as_proxy(batch: BatchSink) -> BatchSink:
    async def send(events: list[tuple[str, dict[str, Any]]]) -> None:
        await batch([(event, {**fields, "server": "proxy"}) for event, fields in events])

    return send
