"""The kube service's forwarder: every Kubernetes API call from the proxy, decided and
passed on to the API server as the user, streams included.

    proxy ──mTLS (proxy host cert)──▶ KubeForwarder ──TLS (certgate's own credentials)──▶ API server
      X-Certgate-Identity: the user          │ strip X-Certgate-*, Impersonate-*, Authorization
      X-Certgate-Cluster:  which one         │ locks, kubernetes_labels, groups/users, --as,
                                             │ kubernetes_resources   (access/kube.py)
                                             │ Impersonate-User / Impersonate-Group
                                             ▼
           plain calls, watches, logs -f:  relayed as they arrive (lists filtered when
                                           kubernetes_resources limit them)
           exec / attach (WebSocket):      a LiveSession (srv/live.py): recorded, listed,
                                           cut by the monitor (locks, idle, expiry)
           other upgrades (port-forward, SPDY): raw pipe, still cut by locks
           X-Certgate-Observe-Session:     an observer of an exec session (observe.py)

Every call is a `kube.request` audit event, refused ones too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from certgate.access.cached_access import CachedAccess
from certgate.access.kube import (
    Impersonation,
    KubeRequest,
    ResourceRules,
    check_path,
    check_resource_grant,
    impersonation,
    parse_request,
    resource_rules,
)
from certgate.access.rbac import RoleSet
from certgate.api.certs import identity_from_x509
from certgate.api.identity import SYSTEM_PROXY, Identity
from certgate.errors import AccessDenied, BadParameter, CertgateError, what_broke
from certgate.kube.filtering import (
    MAX_FILTERED_BODY,
    answer,
    json_only,
    relay_filtered,
    relay_watch,
)
from certgate.kube.kubeconfig import Upstream
from certgate.kube.observe import KubeObservers
from certgate.kube.streams import ExecIO, relay_frames, relay_raw
from certgate.srv.authorize import policy_for
from certgate.srv.http1 import (
    HOP_BY_HOP,
    MAX_HEAD,
    Framing,
    Head,
    body_framing,
    read_body,
    relay_body,
    streaming,
    while_connected,
)
from certgate.srv.http1_server import ClientConnection, Http1Server
from certgate.srv.live import LiveClient, LiveSession
from certgate.srv.registry import SessionRegistry
from certgate.srv.remote_join import CLIENT_ADDR_HEADER, is_observe_request
from certgate.srv.remote_join import identity_from_header as _header_identity
from certgate.srv.session import ObserverFactory, SessionInfo, SessionRefused, SessionTracking

log = logging.getLogger("certgate.kube")

CLUSTER_HEADER = "X-Certgate-Cluster"
CONNECT_TIMEOUT = 10.0

# (event, fields) -> None: queued for auth
Audit = Callable[[str, dict[str, Any]], None]
# (identity, kind) -> recording mode
ModeFor = Callable[[Identity, str], str]


@dataclass
class _Call:
    """One API call on its way: who, where, as whom, and what it touches."""

    identity: Identity
    cluster: str
    client_addr: str
    request: KubeRequest
    role_set: RoleSet
    imp: Impersonation
    rules: ResourceRules
    upstream: Upstream


async def dial(upstream: Upstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                upstream.host,
                upstream.port,
                ssl=upstream.tls_context(),
                server_hostname=upstream.host,
                limit=MAX_HEAD,
            )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise BadParameter(
            f'cannot reach the API server of kubernetes cluster "{upstream.name}": '
            + what_broke(exc)
        ) from exc
    streaming(writer)
    return reader, writer


class KubeForwarder:
    def __init__(
        self,
        *,
        upstreams: dict[str, Upstream],
        labels: dict[str, str],
        access: CachedAccess,
        registry: SessionRegistry,
        observe: ObserverFactory | None,
        recording_mode: ModeFor,
        audit: Audit,
        name: str,
        tracking: SessionTracking | None = None,
        observers: KubeObservers | None = None,
    ) -> None:
        self.upstreams = upstreams
        self._observers = observers  # `cgsh join` of exec sessions, through a proxy
        self.labels = labels
        self._access = access
        self._registry = registry
        self._observe = observe
        self._recording_mode = recording_mode
        self._audit = audit
        self._name = name
        self._tracking = tracking
        self._server: Http1Server[bool] = Http1Server(self._from_proxy, self._call, log)

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> int:
        return await self._server.start(host, port, context)

    async def close(self) -> None:
        await self._server.close()

    async def call_local(self, head: Head, client: ClientConnection) -> bool:
        """A request from the proxy of this process, on the user's own connection
        (LocalServers): decided and served as one from a remote proxy."""
        return await self._call(head, client, True)

    # ---- one proxy connection ---------------------------------------------------------

    def _from_proxy(self, client: ClientConnection) -> bool | None:
        """Only proxies may call: they vouch for the user in X-Certgate-Identity."""
        der = client.peer_certificate()
        if der is None:
            return None
        try:
            caller = identity_from_x509(x509.load_der_x509_certificate(der))
        except (BadParameter, ValueError):
            return None
        if not caller.is_service(SYSTEM_PROXY):
            log.warning("refused a kube connection from %s: not a proxy", caller.username)
            return None
        return True

    async def _call(self, head: Head, client: ClientConnection, _from_proxy: bool) -> bool:
        """Serve one request; whether the connection may carry another."""
        reader, writer = client.reader, client.writer
        if self._observers is not None and is_observe_request(head):
            await self._observers.serve(head, reader, writer)
            return False
        request = parse_request(head.method, head.target)
        cluster = head.get(CLUSTER_HEADER) or ""
        identity: Identity | None = None
        framing: Framing | None = None
        try:
            framing = body_framing(head, response=False)
            identity = _header_identity(head)
            call = self._decide(head, request, identity, cluster)
        except CertgateError as exc:
            # Audited first: reading the refused body may fail (too large, cut off).
            self._audit_call(identity, cluster, request, exc.http_status, exc.message)
            reason = "Forbidden" if isinstance(exc, AccessDenied) else "BadRequest"
            if framing is None:  # where the body ends is unknown: the connection ends
                await answer(writer, exc.http_status, reason, exc.message)
                return False
            await read_body(reader, framing, MAX_FILTERED_BODY)
            await answer(writer, exc.http_status, reason, exc.message)
            return not head.wants_close()
        _rewrite(head, call)
        if head.is_upgrade():
            await self._upgrade(head, client, call)
            return False
        key = call.upstream.name
        try:
            (up_reader, _), response = await client.exchange(
                key, lambda: dial(call.upstream), head, framing, peer="API server"
            )
        except (CertgateError, OSError, asyncio.IncompleteReadError) as exc:
            client.upstreams.drop(key)
            message = exc.message if isinstance(exc, CertgateError) else str(exc)
            await answer(writer, 502, "ServiceUnavailable", message)
            self._audit_call(call.identity, call.cluster, request, 502, message)
            return False
        r_framing = body_framing(response, response=True, request_method=head.method)
        relay: Callable[[], Awaitable[None]] | None = None
        if (
            call.rules.filters
            and request.kind != ""
            and request.verb in ("get", "list", "watch")
            and response.status == 200
        ):
            if request.verb == "watch":

                async def relay() -> None:
                    await while_connected(
                        relay_watch(response, up_reader, writer, r_framing, request, call.rules),
                        client.gone,
                    )
            else:

                async def relay() -> None:
                    await relay_filtered(
                        response, up_reader, writer, r_framing, request, call.rules
                    )

        # A watch or `logs -f` runs for as long as the user likes: held as a live client
        # for it, so a lock (or the end of the certificate, when the roles say so) cuts
        # it as it cuts an exec. Not idle-timed: a stream's user sends nothing.
        watcher: LiveClient | None = None
        if request.verb == "watch" or request.first("follow") == "true":

            async def hang_up() -> None:
                writer.transport.abort()

            policy = replace(policy_for(call.role_set, call.identity), idle_timeout=None)
            watcher = LiveClient(
                identity=call.identity,
                login=call.imp.user,
                target=call.cluster,
                client_addr=call.client_addr,
                policy=policy,
                audit=self._audit,
                close=hang_up,
            )
            self._registry.add_client(watcher)
        ended = "the answer was cut short"  # unless it is relayed whole
        try:
            keep = await client.relay_answer(key, head, response, up_reader, r_framing, relay)
            ended = ""
        finally:
            if watcher is not None:
                self._registry.remove_client(watcher)
            # Also for a stream the user stopped or a lock cut: every call is an event.
            if watcher is not None and watcher.cut_reason:
                ended = f"cut: {watcher.cut_reason}"
            self._audit_call(call.identity, call.cluster, request, response.status, ended=ended)
        return keep

    def _decide(self, head: Head, request: KubeRequest, identity: Identity, cluster: str) -> _Call:
        client_addr = head.get(CLIENT_ADDR_HEADER) or ""
        head.remove_prefix("X-Certgate-")
        # Whatever the client asked to impersonate, only roles decide; --as/--as-group
        # may narrow within them.
        asked = head.remove_prefix("Impersonate-")
        as_user = next((v for k, v in asked if k.lower() == "impersonate-user"), "")
        as_groups = [v for k, v in asked if k.lower() == "impersonate-group"]
        check_path(head.target)
        if identity.expires <= datetime.now(UTC):
            # A kept-alive connection outlives the handshake that checked the certificate.
            raise AccessDenied(
                f"access denied: your certificate expired at {identity.expires:%Y-%m-%d %H:%M:%S} "
                "UTC: run cgsh login"
            )
        upstream = self.upstreams.get(cluster)
        if upstream is None:
            raise AccessDenied(f'kubernetes cluster "{cluster}" is not served here')
        self._access.check_identity(identity, node=cluster)
        check_resource_grant(identity, cluster)
        role_set = self._access.role_set(identity)
        imp = impersonation(
            role_set,
            identity.username,
            cluster,
            self.labels,
            as_user,
            as_groups,
            discovery=request.kind == "",
        )
        rules = resource_rules(role_set, self.labels)
        rules.check(request)
        return _Call(identity, cluster, client_addr, request, role_set, imp, rules, upstream)

    # ---- filtered answers -----------------------------------------------------------------

    async def _upgrade(self, head: Head, conn: ClientConnection, call: _Call) -> None:
        reader, writer = conn.reader, conn.writer
        request = call.request
        websocket = (head.get("Upgrade") or "").lower() == "websocket"
        session: LiveSession | None = None
        where: dict[str, Any] = {}
        # Only exec/attach over WebSocket carry the channel frames certgate reads.
        io = ExecIO(writer, framed=websocket and request.is_session)
        client = LiveClient(
            identity=call.identity,
            login=call.imp.user,
            target=call.cluster,
            client_addr=call.client_addr,
            policy=policy_for(call.role_set, call.identity),
            audit=self._audit,
            close=io.hang_up,
        )
        if request.is_session:
            if not websocket and self._recording_mode(call.identity, "k8s") == "strict":
                message = (
                    "access denied: your roles require kubernetes sessions to be recorded "
                    "(record_session.k8s: strict) and this client's protocol (SPDY) cannot "
                    "be: use a newer kubectl"
                )
                await answer(writer, 403, "Forbidden", message)
                self._audit_call(call.identity, call.cluster, request, 403, message)
                return
            info = SessionInfo(
                id=str(uuid.uuid4()),
                identity=call.identity,
                login=call.imp.user,
                kind="exec",
                started=datetime.now(UTC),
                client_addr=call.client_addr,
                command=" ".join(request.query.get("command", []) if request.query else []) or None,
                tty=request.first("tty") == "true",
                node=call.cluster,
                protocol="k8s",
            )
            session = LiveSession(
                client, info, io, self._registry, observe=self._observe, tracking=self._tracking
            )
            try:
                if websocket:
                    session.open_observer()
            except SessionRefused as exc:
                await answer(writer, 403, "Forbidden", f"access denied: {exc}")
                self._audit_call(call.identity, call.cluster, request, 403, str(exc))
                return
        try:
            (up_reader, up_writer), response = await conn.exchange(
                call.upstream.name,
                lambda: dial(call.upstream),
                head,
                body_framing(head, response=False),
                peer="API server",
                fresh=True,
            )
        except (CertgateError, OSError, asyncio.IncompleteReadError) as exc:
            message = exc.message if isinstance(exc, CertgateError) else str(exc)
            self._audit_call(call.identity, call.cluster, request, 502, message)
            await answer(writer, 502, "ServiceUnavailable", message)
            if session is not None:
                session.ended("refused")
            return
        try:
            self._audit_call(call.identity, call.cluster, request, response.status)
            writer.write(response.encode())
            if response.status != 101:
                await relay_body(up_reader, writer, body_framing(response, response=True))
                if session is not None:
                    session.ended("refused")
                return
            io.upstream = up_writer
            self._registry.add_client(client)
            where = {
                "kubernetes_cluster": call.cluster,
                "kubernetes_namespace": request.namespace,
                "kubernetes_pod": request.name,
                "kubernetes_container": request.first("container"),
                "kubernetes_user": call.imp.user,
                "kubernetes_groups": list(call.imp.groups),
            }
            if session is not None:
                session.place = where  # session.join/leave name the pod too
                session.begin()
                session.announce(where)
            if session is not None and websocket:
                exit_code = await relay_frames(reader, writer, up_reader, up_writer, session, io)
                session.exec_finished(exit_code)
            else:
                await relay_raw(reader, writer, up_reader, up_writer, client)
        finally:
            up_writer.close()
            self._registry.remove_client(client)
            if session is not None:
                # session.end names the pod as session.start did.
                session.ended(None, where)
                session.closed()
            io.closed.set()

    def _audit_call(
        self,
        identity: Identity | None,
        cluster: str,
        request: KubeRequest,
        status: int,
        reason: str = "",
        *,
        ended: str = "",
    ) -> None:
        fields: dict[str, Any] = {
            "user": identity.username if identity else "",
            "kubernetes_cluster": cluster,
            **request.audit_fields(),
            "status": status,
            "kube_service": self._name,
        }
        if reason:
            fields["reason"] = reason
        if ended:
            fields["ended"] = ended  # a stream the user left, or a lock cut
        self._audit("kube.request", fields)


def _rewrite(head: Head, call: _Call) -> None:
    """The request as the API server gets it: certgate's credentials, the user's name."""
    upstream = call.upstream
    for name in HOP_BY_HOP:
        head.remove(name)
    head.remove("Authorization")
    head.target = upstream.base_path + head.target
    head.set("Host", upstream.host_header)
    bearer = upstream.bearer()
    if bearer:
        head.add("Authorization", f"Bearer {bearer}")
    head.add("Impersonate-User", call.imp.user)
    for group in call.imp.groups:
        head.add("Impersonate-Group", group)
    if call.rules.filters:
        head.remove("Accept-Encoding")  # filtered answers are read, so plain
        # ... and JSON, the one form they are read in (YAML or protobuf would pass
        # unread): kubectl's Table and plain JSON stay, anything else is dropped.
        head.set("Accept", json_only(head.get("Accept") or ""))
