"""The proxy's Kubernetes listener (3026): kubectl's one way into every cluster.

    kubectl ──TLS, user cert (cgsh kube credentials)──▶ KubeListener
        https://PROXY:3026/k8s/<cluster>/api/v1/...      │ identity from the certificate
                                                         │ locks; the cluster exists and
                                                         │ the user's roles reach it
                                                         │ strip X-Certgate-* sent by the client
                                                         ▼
        kube service (spec.addr) ◀──mTLS (proxy host cert)── /api/v1/... with
                                   X-Certgate-Identity / -Cluster / -Client-Addr

The kube service makes every other decision (groups, --as, kubernetes_resources) and
runs exec sessions; the proxy relays bytes as they come, upgrades included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from certgate.access.cached_access import CachedAccess
from certgate.access.kube import (
    check_cluster,
    check_resource_grant,
    parse_request,
    status_body,
)
from certgate.api.certs import identity_from_x509
from certgate.api.identity import Identity
from certgate.api.kube_cluster import PROXY_PATH_PREFIX, KubeCluster
from certgate.errors import AccessDenied, BadParameter, CertgateError, NotFound
from certgate.rpc.watcher import ResourceView
from certgate.srv.http1 import (
    MAX_HEAD,
    Head,
    IdlePool,
    ProtocolError,
    body_framing,
    close_writer,
    closed_waiter,
    pipe,
    read_body,
    read_head,
    relay_body,
    response_head,
    streaming,
    while_connected,
)

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
    ) -> None:
        self._view = view
        self._access = access
        self._service_tls = service_tls
        self._audit = audit
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._pool = IdlePool()
        self._tls: ssl.SSLContext | None = None

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> int:
        self._server = await asyncio.start_server(
            self._serve, host or None, port, ssl=context, limit=MAX_HEAD, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._pool.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        streaming(writer)
        upstreams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        gone = closed_waiter(writer)
        try:
            identity = _peer_identity(writer)
            peer = writer.get_extra_info("peername")
            client_addr = f"{peer[0]}:{peer[1]}" if peer else ""
            while (head := await read_head(reader)) is not None:
                if not await self._call(
                    head, reader, writer, identity, client_addr, upstreams, gone
                ):
                    break
        except (ConnectionError, ProtocolError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("kube client connection ended: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("kube client connection failed")
        finally:
            for key, connection in upstreams.items():
                self._pool.give(key, connection)
            self._connections.discard(task)
            await close_writer(writer)
            gone.cancel()  # done by now, unless the close timed out

    async def _call(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        identity: Identity | None,
        client_addr: str,
        upstreams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]],
        gone: asyncio.Future[None],
    ) -> bool:
        framing = body_framing(head, response=False)
        name, path = _split_target(head.target)
        try:
            if identity is None:
                raise AccessDenied(
                    "access denied: kubernetes calls need a certgate certificate: "
                    "run cgsh kube login CLUSTER"
                )
            cluster = self._route(identity, name)
        except CertgateError as exc:
            await read_body(reader, framing, 1024 * 1024)
            await _answer(writer, exc.http_status, exc.message)
            self._audit_refusal(identity, name, head.method, path, exc)
            return not head.wants_close()
        assert identity is not None
        head.target = path
        # Only this proxy speaks for the user: anything that looks like it is dropped.
        head.remove_prefix("X-Certgate-")
        head.add("X-Certgate-Identity", identity.to_json())
        head.add("X-Certgate-Cluster", cluster.name)
        head.add("X-Certgate-Client-Addr", client_addr)
        upgrade = head.is_upgrade()
        key = cluster.spec.addr
        response: Head | None = None
        try:
            for attempt in (1, 2):
                reused = False
                if upgrade:
                    connection = await self._dial(cluster)
                elif key in upstreams and not upstreams[key][1].is_closing():
                    connection, reused = upstreams[key], True
                else:
                    pooled = self._pool.take(key)
                    reused = pooled is not None
                    connection = pooled or await self._dial(cluster)
                    upstreams[key] = connection
                up_reader, up_writer = connection
                try:
                    up_writer.write(head.encode())
                    await relay_body(reader, up_writer, framing)
                    response = await read_head(up_reader)
                    if response is None:
                        raise ProtocolError("the kube service closed the connection")
                    break
                except BaseException as exc:
                    # Never reused after a failure; a kept-alive connection closed
                    # meanwhile: once more on a fresh one, bodiless requests only.
                    stale = upstreams.pop(key, None)
                    if stale is not None:
                        stale[1].close()
                    up_writer.close()
                    if not isinstance(exc, OSError | ProtocolError | asyncio.IncompleteReadError):
                        raise
                    if attempt == 2 or not reused or framing.kind != "none":
                        raise
        except (CertgateError, OSError, asyncio.IncompleteReadError) as exc:
            stale = upstreams.pop(key, None)
            if stale is not None:
                stale[1].close()
            message = exc.message if isinstance(exc, CertgateError) else str(exc)
            await _answer(writer, 502, f'kubernetes cluster "{cluster.name}": {message}')
            return False
        assert response is not None
        writer.write(response.encode())
        if upgrade and response.status == 101:
            await _both(pipe(reader, up_writer), pipe(up_reader, writer))
            up_writer.close()
            return False
        r_framing = body_framing(response, response=True, request_method=head.method)
        try:
            if r_framing.kind == "length":
                await relay_body(up_reader, writer, r_framing)
            else:  # streams (watches, logs -f) end when the user leaves
                await while_connected(relay_body(up_reader, writer, r_framing), gone)
        except BaseException:
            # Cut off in the middle of an answer: never hand this connection on.
            upstreams.pop(key, None)
            up_writer.close()
            raise
        if upgrade or r_framing.kind == "close" or response.wants_close():
            upstreams.pop(key, None)
            up_writer.close()
            return False
        return not head.wants_close()

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

    async def _dial(
        self, cluster: KubeCluster
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, _, port = cluster.spec.addr.rpartition(":")
        if self._tls is None:
            self._tls = self._service_tls()  # built once: it loads certificates
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host.strip("[]"),
                    int(port),
                    ssl=self._tls,
                    server_hostname=host.strip("[]"),
                    limit=MAX_HEAD,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
            raise BadParameter(
                f"cannot reach its kube service at {cluster.spec.addr}: {exc}"
            ) from exc
        streaming(writer)
        return reader, writer

    def _audit_refusal(
        self, identity: Identity | None, cluster: str, method: str, path: str, exc: CertgateError
    ) -> None:
        request = parse_request(method, path)
        self._audit(
            "kube.request",
            {
                "user": identity.username if identity else "",
                "kubernetes_cluster": cluster,
                "method": method,
                "path": request.path,
                "verb": request.verb,
                "status": exc.http_status,
                "reason": exc.message,
                "server": "proxy",
            },
        )


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


def _peer_identity(writer: asyncio.StreamWriter) -> Identity | None:
    """The user of the client certificate (TLS already checked it against the user CA)."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None:
        return None
    try:
        identity = identity_from_x509(x509.load_der_x509_certificate(der))
    except (BadParameter, ValueError):
        return None
    return identity if identity.kind == "user" else None


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


async def _both(*jobs: Any) -> None:
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
