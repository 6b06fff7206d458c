"""The proxy's Kubernetes listener (3026): kubectl's one way into every cluster.

    kubectl ──TLS, user cert (cgsh kube credentials)──▶ KubeListener
        https://PROXY:3026/k8s/<cluster>/api/v1/...      │ identity from the certificate
                                                         │ locks; the cluster exists and
                                                         │ the user's roles reach it
                                                         │ strip X-Certgate-* sent by the client
                                                         ▼
        kube service (spec.addr) ◀──mTLS (proxy host cert)── /api/v1/... with
                                   X-Certgate-Identity / -Cluster / -Client-Addr
        (a kube service in this process gets the same request handed over in-process,
        with kubectl's connection to answer on: LocalServers)

The kube service makes every other decision (groups, --as, kubernetes_resources) and
runs exec sessions; the proxy relays bytes as they come, upgrades included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from certgate.access.cached_access import CachedAccess
from certgate.access.kube import (
    check_cluster,
    check_path,
    check_resource_grant,
    parse_request,
    status_body,
)
from certgate.api.certs import identity_from_x509
from certgate.api.identity import Identity
from certgate.api.kube_cluster import PROXY_PATH_PREFIX, KubeCluster
from certgate.errors import AccessDenied, BadParameter, CertgateError, NotFound, what_broke
from certgate.rpc.watcher import ResourceView
from certgate.srv.http1 import (
    MAX_HEAD,
    Framing,
    Head,
    body_framing,
    read_body,
    response_head,
    streaming,
)
from certgate.srv.http1_server import (
    ClientConnection,
    Connection,
    Http1Limits,
    Http1Server,
    LocalServers,
)
from certgate.srv.splice import splice

log = logging.getLogger("certgate.proxy.kube")

CONNECT_TIMEOUT = 10.0

# (event, fields) -> None
Audit = Callable[[str, dict[str, Any]], Any]


class KubeListener:
    def __init__(
        self,
        view: ResourceView,
        access: CachedAccess,
        service_tls: Callable[[], ssl.SSLContext],
        audit: Callable[[str, dict[str, Any]], None],
        local: LocalServers | None = None,
        limits: Http1Limits | None = None,
    ) -> None:
        self._view = view
        self._access = access
        self._service_tls = service_tls
        self._audit = audit
        self._local = local  # kube services of this process, handed requests directly
        self._tls: ssl.SSLContext | None = None
        self._server: Http1Server[_Peer] = Http1Server(_peer, self._call, log, limits)

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> int:
        return await self._server.start(host, port, context)

    async def close(self) -> None:
        await self._server.close()

    async def _call(self, head: Head, client: ClientConnection, peer: _Peer) -> bool:
        reader, writer = client.reader, client.writer
        name, path = _split_target(head.target)
        identity = peer.identity
        framing: Framing | None = None
        try:
            framing = body_framing(head, response=False)
            if identity is None:
                raise AccessDenied(
                    "access denied: kubernetes calls need a certgate certificate: "
                    "run cgsh kube login CLUSTER"
                )
            check_path(path)  # judged here as the API server will read it
            cluster = self._route(identity, name)
        except CertgateError as exc:
            # Audited first: reading the refused body may fail (too large, cut off).
            self._audit_refusal(identity, name, head.method, path, exc)
            if framing is None:  # where the body ends is unknown: the connection ends
                await _answer(writer, exc.http_status, exc.message)
                return False
            await read_body(reader, framing, 1024 * 1024)
            await _answer(writer, exc.http_status, exc.message)
            return not head.wants_close()
        head.target = path
        # Only this proxy speaks for the user: anything that looks like it is dropped.
        head.remove_prefix("X-Certgate-")
        head.add("X-Certgate-Identity", identity.to_json())
        head.add("X-Certgate-Cluster", cluster.name)
        head.add("X-Certgate-Client-Addr", peer.addr)
        key = cluster.spec.addr
        local = self._local.get(key) if self._local is not None else None
        if local is not None:
            # Its kube service runs in this process: the request goes to it as it would
            # over mTLS, and it answers on this connection (no TLS leg to ourselves).
            return await local(head, client)
        upgrade = head.is_upgrade()
        try:
            (up_reader, up_writer), response = await client.exchange(
                key,
                lambda: self._dial(cluster),
                head,
                framing,
                peer="kube service",
                fresh=upgrade,
            )
        except (CertgateError, OSError, asyncio.IncompleteReadError) as exc:
            client.upstreams.drop(key)
            message = exc.message if isinstance(exc, CertgateError) else str(exc)
            await _answer(writer, 502, f'kubernetes cluster "{cluster.name}": {message}')
            return False
        r_framing = body_framing(response, response=True, request_method=head.method)
        if not upgrade:
            return await client.relay_answer(key, head, response, up_reader, r_framing)
        try:  # a protocol switch has a connection of its own, never kept
            if response.status == 101:
                writer.write(response.encode())
                await splice(reader, writer, up_reader, up_writer)
            else:
                await client.relay_response(response, up_reader, r_framing)
        finally:
            up_writer.close()
        return False

    def _route(self, identity: Identity, name: str) -> KubeCluster:
        """The cluster a request names, if the user may reach it now."""
        if not name:
            raise NotFound(
                f"no kubernetes cluster in the path: the server URL ends in "
                f"{PROXY_PATH_PREFIX}CLUSTER (cgsh kube login CLUSTER writes it)"
            )
        self._access.check_identity(identity, node=name)
        check_resource_grant(identity, name)
        cluster = self._view.get("kube_cluster", name)
        if isinstance(cluster, KubeCluster) and _expired(cluster):
            cluster = None  # its kube service stopped announcing it
        role_set = self._access.role_set(identity)
        if not isinstance(cluster, KubeCluster) or not role_set.can_access_kube(
            cluster.metadata.labels
        ):
            if isinstance(cluster, KubeCluster) and role_set.kube_denier(cluster.metadata.labels):
                check_cluster(role_set, name, cluster.metadata.labels)
            # The same answer as for a missing cluster: roles decide what a user may see.
            raise NotFound(f'kubernetes cluster "{name}" not found')
        return cluster

    async def _dial(self, cluster: KubeCluster) -> Connection:
        host, _, port = cluster.spec.addr.rpartition(":")
        if self._tls is None:
            self._tls = self._service_tls()  # built once: it loads certificates
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"),
                    int(port),
                    ssl=self._tls,
                    server_hostname=host.strip("[]"),
                    limit=MAX_HEAD,
                )
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
            raise BadParameter(
                f"cannot reach its kube service at {cluster.spec.addr}: {what_broke(exc)}"
            ) from exc
        streaming(writer)
        return reader, writer

    def _audit_refusal(
        self, identity: Identity | None, cluster: str, method: str, path: str, exc: CertgateError
    ) -> None:
        fields: dict[str, Any] = {
            "user": identity.username if identity else "",
            "kubernetes_cluster": cluster,
            **parse_request(method, path).audit_fields(),
            "status": exc.http_status,
            "reason": exc.message,
            "server": "proxy",
        }
        self._audit("kube.request", fields)


def _expired(cluster: KubeCluster) -> bool:
    expires = cluster.metadata.expires
    return expires is not None and expires < datetime.now(UTC)


def _split_target(target: str) -> tuple[str, str]:
    """`/k8s/dev/api/v1/pods?x` -> ("dev", "/api/v1/pods?x"); ("", target) otherwise."""
    if not target.startswith(PROXY_PATH_PREFIX):
        return "", target
    rest = target[len(PROXY_PATH_PREFIX) :]
    name, slash, path = rest.partition("/")
    if "?" in name:
        name, _, query = name.partition("?")
        return name, "/?" + query
    return name, slash + path if slash else "/"


@dataclass(frozen=True)
class _Peer:
    identity: Identity | None  # None: no certgate user certificate
    addr: str


def _peer(client: ClientConnection) -> _Peer:
    """Who is calling: the user of the client certificate (TLS already checked it
    against the user CA), and from where."""
    peer = client.writer.get_extra_info("peername")
    addr = f"{peer[0]}:{peer[1]}" if peer else ""
    der = client.peer_certificate()
    if der is None:
        return _Peer(None, addr)
    try:
        identity = identity_from_x509(x509.load_der_x509_certificate(der))
    except (BadParameter, ValueError):
        return _Peer(None, addr)
    return _Peer(identity if identity.kind == "user" else None, addr)


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reasons = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 502: "ServiceUnavailable"}
    reason = reasons.get(status, "BadRequest")
    body = status_body(status, reason, message)
    head = response_head(
        status, reason, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    writer.write(head.encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
