"""The proxy's SSH listener (port 3023): a standard jump host.

    ssh -J alice@proxy:3023 root@web-1
      client ──SSH (user cert)──> proxy ──TCP──> node web-1:3022
              direct-tcpip "web-1"      (resolved through the inventory)

The proxy authenticates the user's certificate against the cluster's user CA, checks
locks, and opens direct-tcpip channels only to nodes of the inventory the user's roles
can see — never to an arbitrary address. The end-to-end SSH session runs between the
client and the node, which makes its own decision on the login. A node the roles cannot
reach is still dialled for a user who may join a live session on it (`cgsh join`); the
node then lets that connection do nothing but join. A Kubernetes exec session has no
node: `cgsh join` logs in to the proxy itself as `join:observer:<id>`, and the proxy
relays the kube service's view of it (kube_join.py); that is the only session it serves.

Every authenticated connection is a LiveClient in the proxy's session registry, so the
proxy's session monitor cuts it when a lock (or strict locking) rules its user out: the
proxy holds the client's connection and sees the lock as soon as the node does. The cut
disconnects the client at once with the lock's message (OpenSSH prints it: "Received
disconnect from ...: access denied: locked: ..."), and leaves each tunnel's node side
open for a moment so the node ends its session as locked (tunnel.py `linger`). Whichever
of the two sees the lock first ends what the user sees.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh

from certgate.access.cached_access import CachedAccess
from certgate.api.identity import Identity
from certgate.api.node import Node
from certgate.api.session_tracker import parse_join_login
from certgate.errors import AccessDenied, CertgateError, NotFound, what_broke
from certgate.proxy.agentless import AgentlessForwarder
from certgate.proxy.kube_join import KubeJoins, KubeJoinTarget
from certgate.proxy.tunnel import NodeTunnel, open_tunnel
from certgate.rpc.audit import AuditSink
from certgate.srv.certcapture import (
    certificate_identity,
    check_compatible,
    install_certificate_capture,
    reuse_trusted_certificates,
    skip_config_reload,
    skip_ignore_packets,
)
from certgate.srv.corked import CorkedListener, cut_connection
from certgate.srv.hangup import TERMINATE_FLUSH_SECONDS, connection_closed
from certgate.srv.live import LiveClient
from certgate.srv.registry import SessionRegistry
from certgate.srv.session import SessionPolicy
from certgate.srv.user_cas import TrustedUserCAs

log = logging.getLogger("certgate.proxy.ssh")

DIAL_TIMEOUT = 5.0
# Only AES-GCM: OpenSSH clients take the first of *their* list that the server offers
# (chacha20, then aes-ctr), and asyncssh moves AES-GCM about twice as fast as those.
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]


class _Connection(asyncssh.SSHServer):
    def __init__(self, proxy: ProxySSH) -> None:
        self._proxy = proxy
        self._conn: Any = None
        self.identity: Identity | None = None
        self.client_addr = ""
        self.kube_join: KubeJoinTarget | None = None
        # Once authenticated: what the proxy's session monitor cuts.
        self.client: LiveClient | None = None
        # The node tunnels of this connection (weakly: a closed one just goes away).
        self._tunnels: weakref.WeakSet[NodeTunnel] = weakref.WeakSet()

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.client_addr = f"{peer[0]}:{peer[1]}" if peer else ""
        install_certificate_capture(conn, self._verified)
        reuse_trusted_certificates(conn)
        skip_config_reload(conn)
        skip_ignore_packets(conn)
        _allow_jumping(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self._proxy.registry.remove_client(self.client)

    def begin_auth(self, username: str) -> bool:
        # Any principal will do here: the jump host does not log anyone in; the node
        # checks the login against the certificate's principals.
        keys = self._proxy.user_cas.current().authorized_keys
        if keys is not None:
            self._conn.set_authorized_keys(keys)
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    async def _verified(self, login: str, key_data: bytes) -> bool:
        identity = certificate_identity(key_data)
        try:
            self._proxy.access.check_identity(identity)
        except CertgateError as exc:
            await self._proxy.audit(
                "session.rejected",
                user=identity.username,
                login=login,
                addr=self.client_addr,
                reason=exc.message,
                kind="ssh",
                server="proxy",
            )
            return False
        join = parse_join_login(login)
        if join is not None and not await self._join_kube(identity, login, *join):
            return False
        self.identity = identity
        self._admit(identity)
        return True

    def _admit(self, identity: Identity) -> None:
        # No login and no target: the proxy does not see the login (it is inside the
        # client's SSH session with the node), and one connection may reach several
        # nodes; login and node locks are the node's to apply.
        self.client = LiveClient(
            identity=identity,
            login="",
            target="",
            client_addr=self.client_addr,
            policy=SessionPolicy(),
            audit=_no_sessions,
            close=self._closed,
            disconnect=self._disconnect,
        )
        self._proxy.registry.add_client(self.client)

    def _disconnect(self, message: str) -> None:
        """Cut by the monitor: the client is disconnected with the message, in the cut's
        own pass (the socket too: corked.py `cut_connection`); the nodes behind get a moment to end
        their sessions with the same lock."""
        for tunnel in list(self._tunnels):
            tunnel.linger(TERMINATE_FLUSH_SECONDS)
        cut_connection(self._conn, message)

    async def _closed(self) -> None:
        """A cut jump connection's hang-up: its cut already disconnected it; this waits
        until the connection is closed, so the cut's log says when the last one was."""
        await connection_closed(self._conn)

    async def _join_kube(self, identity: Identity, login: str, mode: str, session_id: str) -> bool:
        try:
            if self._proxy.kube_joins is None:
                raise AccessDenied("access denied: this proxy serves no kubernetes sessions")
            self.kube_join = await self._proxy.kube_joins.target(identity, mode, session_id)
        except CertgateError as exc:
            await self._proxy.audit(
                "session.rejected", user=identity.username, login=login,
                addr=self.client_addr, reason=exc.message, kind="ssh", server="proxy",
            )  # fmt: skip
            return False
        return True

    def session_requested(self) -> Any:
        # Nobody gets a shell on the proxy itself: a joiner of a kube session gets a view.
        joins = self._proxy.kube_joins
        if self.kube_join is None or self.identity is None or joins is None:
            return False
        session = joins.channel(self.kube_join, self.identity, self.client_addr)
        return self._conn.create_server_channel(encoding=None), session

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[Any]:
        return self._dial(dest_host)

    async def _dial(self, target: str) -> Any:
        assert self.identity is not None
        identity = self.identity
        try:
            try:
                node = self._proxy.access.resolve_node(identity, target)
            except NotFound:
                node = await self._proxy.node_to_join(identity, target)
        except CertgateError as exc:
            await self._proxy.audit(
                "session.rejected", user=identity.username, node=target,
                addr=self.client_addr, reason=exc.message, kind="ssh", server="proxy",
            )  # fmt: skip
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, exc.message) from None
        if node.spec.sub_kind == "openssh":
            # An agentless sshd: the proxy itself terminates SSH and decides (agentless.py).
            if self._proxy.agentless is None:
                reason = f'node "{node.name}" is an agentless node this proxy does not serve'
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason)
            return await self._proxy.agentless.open_channel(node, self.client_addr)
        host, _, port = node.spec.addr.rpartition(":")
        try:
            tunnel = await open_tunnel(host, int(port), DIAL_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            reason = f'node "{node.name}" at {node.spec.addr} is unreachable'
            log.warning("%s: %s", reason, what_broke(exc))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from None
        self._tunnels.add(tunnel)
        return tunnel

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False


def _no_sessions(event: str, fields: dict[str, Any]) -> None:
    """A jump connection's LiveClient runs no sessions here, so it audits nothing."""


def _allow_jumping(conn: Any) -> None:
    """Let direct-tcpip through whatever `permit-port-forwarding` says.

    asyncssh treats every direct-tcpip channel as port forwarding and checks the
    certificate's permit flag. On the jump host a channel is the jump itself, and it
    only reaches inventory nodes the roles allow; port forwarding proper (-L/-R) is
    decided by the node. The override is per connection, never on the class.
    """
    original = conn.check_certificate_permission

    def check_certificate_permission(permission: str) -> bool:
        return permission == "port-forwarding" or bool(original(permission))

    conn.check_certificate_permission = check_certificate_permission


class ProxySSH:
    def __init__(
        self,
        host_key: str,
        host_cert: str,
        user_ca_keys: Callable[[], list[str]],
        access: CachedAccess,
        audit: AuditSink,
        agentless: AgentlessForwarder | None = None,
        live_sessions: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None,
        kube_joins: KubeJoins | None = None,
        registry: SessionRegistry | None = None,
    ) -> None:
        # Fail at construction, not at the first login, if asyncssh changed under us.
        check_compatible()
        self._host_key = asyncssh.import_private_key(host_key)
        self._host_cert = asyncssh.import_certificate(host_cert)
        # Read for every connection (a rotated CA applies to the next login), parsed
        # only when it changed.
        self.user_cas = TrustedUserCAs(user_ca_keys)
        self.access = access
        self.audit = audit
        self.agentless = agentless
        # node name -> the live sessions there (auth's trackers), for join-only dials.
        self.live_sessions = live_sessions
        self.kube_joins = kube_joins
        # The proxy's registry (shared with the agentless forwarder): its session monitor
        # cuts the jump connections of locked users.
        self.registry = registry or SessionRegistry()
        self._server: Any = None

    async def node_to_join(self, identity: Identity, target: str) -> Node:
        """The node `target` names, if a session the user may join runs there.

        NotFound otherwise: the same answer as for a node the roles cannot see."""
        node = self.access.find_node(target)
        if self.live_sessions is not None:
            for session in await self.live_sessions(node.name):
                try:
                    self.access.check_join(
                        identity, session["user"], session["roles"], "observer", node.name
                    )
                except AccessDenied:
                    continue
                return node
        raise NotFound(f'node "{target}" not found')

    async def start(self, host: str, port: int) -> int:
        # CorkedListener: each pass of the loop's packets leave in one send() (corked.py).
        self._server = await asyncssh.listen(
            host or "",
            port,
            tunnel=CorkedListener(),
            server_factory=lambda: _Connection(self),
            server_host_keys=[(self._host_key, self._host_cert)],
            encryption_algs=ENCRYPTION_ALGS,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=30,
            # No line editor: the only sessions are kube joiners' views (raw bytes).
            line_editor=False,
            keepalive_interval=30,
        )
        return int(self._server.get_port()) or port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
