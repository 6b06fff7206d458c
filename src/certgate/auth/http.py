"""The auth service's HTTPS API (port 3025, mTLS).

Each route names the (resource, verb) it needs; `_handler` runs the Authorizer on the
caller before the route's code, so no route can forget the check. Callers are known
by their client certificate:

- issued by the host TLS CA: a service (proxy, node, the local admin);
- issued by the user TLS CA: a user;
- a proxy may pass a user's certificate on in `Certgate-Forwarded-Cert` (remote cgctl
  and renewals through the proxy); auth verifies it against the user CA itself and
  refuses the header from anyone but a proxy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509

from certgate.api.certs import identity_from_x509, verify_x509_client_cert
from certgate.api.codec import dump, from_dict, to_dict
from certgate.api.duration import parse_duration
from certgate.api.identity import SYSTEM_KUBE, SYSTEM_PROXY, Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock
from certgate.api.node import Node
from certgate.auth import permissions as perm
from certgate.auth.http_agentless import add_agentless_routes
from certgate.auth.http_body import json_body, required_str, str_list
from certgate.auth.http_recordings import add_recording_routes
from certgate.auth.http_sessions import add_session_routes
from certgate.auth.permissions import Authorizer
from certgate.auth.server import AuthServer
from certgate.backend.base import EventType
from certgate.errors import AccessDenied, BadParameter, CertgateError, to_json
from certgate.recording.store import RecordingStore
from certgate.services.audit import EVENT_CODES

log = logging.getLogger("certgate.auth")

FORWARDED_CERT = "Certgate-Forwarded-Cert"
FORWARDED_ADDR = "Certgate-Client-Addr"
# The most audit events one call from a service carries.
MAX_EVENTS_PER_CALL = 1000
# Client certificates whose parsed identity is kept (each is a few hundred bytes).
PEER_CACHE_SIZE = 4096

Handler = Callable[[web.Request, Identity | None], Awaitable[Any]]


class AuthAPI:
    def __init__(
        self, server: AuthServer, metrics: Any = None, recordings: RecordingStore | None = None
    ) -> None:
        self.server = server
        self.recordings = recordings  # session recordings (http_recordings.py)
        self.authorizer = Authorizer(
            server.load_roles, server.role_sets, check_not_locked=server.check_not_locked
        )
        self.metrics = metrics
        self._host_ca_subject: x509.Name | None = None
        # Verified client certificate (DER) -> who it speaks for. The TLS handshake
        # verified it; what it says never changes, so it is parsed once, not per request.
        self._peers: dict[bytes, Identity] = {}

    # caller identity ----------------------------------------------------------------

    def _host_subject(self) -> x509.Name:
        if self._host_ca_subject is None:
            pem = self.server.issuer.authorities["host_tls"].spec.active_keys[0].public
            self._host_ca_subject = x509.load_pem_x509_certificate(pem.encode()).subject
        return self._host_ca_subject

    def _peer(self, request: web.Request) -> Identity | None:
        """The identity of the client certificate the TLS handshake verified, if any."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            return None
        identity = self._peers.get(der)
        if identity is None:
            cert = x509.load_der_x509_certificate(der)
            # The kind comes from which CA signed the certificate, never from its content.
            is_service = cert.issuer == self._host_subject()
            identity = _with_kind(identity_from_x509(cert), "service" if is_service else "user")
            if len(self._peers) >= PEER_CACHE_SIZE:
                del self._peers[next(iter(self._peers))]  # the oldest
            self._peers[der] = identity
        return identity

    def caller(self, request: web.Request) -> Identity | None:
        """Who is calling, from the verified client certificate (or forwarded one)."""
        identity = self._peer(request)
        forwarded = request.headers.get(FORWARDED_CERT)
        if identity is None:
            if forwarded:
                raise AccessDenied(
                    "access denied: forwarded identities are accepted only from proxies"
                )
            return None
        if forwarded:
            if not identity.is_service(SYSTEM_PROXY):
                raise AccessDenied(
                    "access denied: forwarded identities are accepted only from proxies"
                )
            user_cas = [
                k.public for k in self.server.issuer.authorities["user_tls"].spec.active_keys
            ]
            try:
                forwarded_cert = x509.load_der_x509_certificate(
                    base64.b64decode(forwarded, validate=True)
                )
            except ValueError as exc:
                raise AccessDenied("access denied: malformed forwarded certificate") from exc
            identity = verify_x509_client_cert(forwarded_cert, user_cas, self.server.clock.now())
            identity = _with_kind(identity, "user")
        return identity

    def client_addr(self, request: web.Request) -> str:
        """Where the user is; only a proxy may say so for a user it passes on."""
        forwarded = request.headers.get(FORWARDED_ADDR)
        if forwarded and self._direct_is_proxy(request):
            return forwarded
        return request.remote or ""

    def _direct_is_proxy(self, request: web.Request) -> bool:
        identity = self._peer(request)
        return identity is not None and identity.is_service(SYSTEM_PROXY)

    # plumbing -----------------------------------------------------------------------

    def _handler(
        self, resource: str | None, verb: str, fn: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                caller = self.caller(request)
                if resource is not None:
                    caller = await self.authorizer.check(caller, resource, verb)
                result = await fn(request, caller)
            except CertgateError as exc:
                if self.metrics:
                    self.metrics.errors.labels(kind=exc.kind).inc()
                return web.json_response(to_json(exc), status=exc.http_status)
            if isinstance(result, web.StreamResponse):
                return result
            if result is None:
                return web.Response(status=204)
            return web.json_response(result)

        return handle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[_internal_errors])
        r = app.router
        add = self._handler
        r.add_get("/v1/ping", add(None, "", self.ping))
        r.add_post("/v1/login", add(perm.LOGIN, "create", self.login))
        r.add_post("/v1/certs/renew", add(perm.SELF, "update", self.renew))
        r.add_get("/v1/whoami", add(perm.SELF, "read", self.whoami))
        r.add_get("/v1/invites/{token}", add(perm.INVITE, "read", self.get_invite))
        r.add_post("/v1/invites/{token}", add(perm.INVITE, "update", self.complete_invite))
        r.add_post("/v1/join", add(None, "", self.join))
        r.add_post("/v1/users", add("user", "create", self.add_user))
        r.add_post("/v1/users/{name}/reset", add("user", "update", self.reset_user))
        r.add_post("/v1/tokens", add("token", "create", self.add_token))
        r.add_get("/v1/authorities/{type}/export", add(None, "", self.export_authority))
        r.add_get("/v1/events", add("event", "list", self.search_events))
        r.add_post("/v1/events", add(perm.AUDIT_WRITE, "create", self.record_event))
        for kind in ("role", "user", "token", "lock", "node", "cert_authority", "kube_cluster"):
            r.add_get(f"/v1/resources/{kind}", add(kind, "list", self.list_resources))
            r.add_get(f"/v1/resources/{kind}/{{name}}", add(kind, "read", self.get_resource))
            r.add_delete(f"/v1/resources/{kind}/{{name}}", add(kind, "delete", self.rm_resource))
        r.add_post("/v1/resources", add(None, "", self.put_resource))
        r.add_get("/v1/watch", add(None, "", self.watch))
        r.add_post("/v1/nodes/heartbeat", add(perm.HEARTBEAT, "update", self.heartbeat))
        r.add_get("/v1/my/nodes", add(perm.SELF, "read", self.my_nodes))
        r.add_get("/v1/my/kube_clusters", add(perm.SELF, "read", self.my_kube_clusters))
        add_recording_routes(self, r)
        add_session_routes(self, r)
        add_agentless_routes(self, r)
        return app

    # routes -------------------------------------------------------------------------

    async def ping(self, request: web.Request, caller: Identity | None) -> Any:
        return {
            "cluster_name": self.server.cluster_name,
            "proxy_public_addr": self.server.proxy_public_addr,
            "version": "0.1.0",
        }

    async def login(self, request: web.Request, caller: Identity | None) -> Any:
        body = await json_body(request)
        bundle = await self.server.login(
            username=required_str(body, "user"),
            password=required_str(body, "password"),
            otp=required_str(body, "otp"),
            public_key=required_str(body, "public_key"),
            ttl=_ttl(body),
            client_addr=self.client_addr(request),
        )
        if self.metrics:
            self.metrics.logins.inc()
            self.metrics.certs_issued.inc()
        return bundle.to_dict()

    async def renew(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        if caller.kind != "user":
            raise AccessDenied("access denied: only users renew certificates here")
        body = await json_body(request)
        bundle = await self.server.renew(caller, required_str(body, "public_key"), _ttl(body))
        if self.metrics:
            self.metrics.certs_issued.inc()
        return bundle.to_dict()

    async def whoami(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        return caller.to_dict()

    async def get_invite(self, request: web.Request, caller: Identity | None) -> Any:
        info = await self.server.get_invite(request.match_info["token"])
        return {"user": info.user, "totp_secret": info.totp_secret, "totp_uri": info.totp_uri}

    async def complete_invite(self, request: web.Request, caller: Identity | None) -> Any:
        body = await json_body(request)
        await self.server.complete_invite(
            request.match_info["token"],
            required_str(body, "password"),
            required_str(body, "otp"),
            self.client_addr(request),
        )
        return None

    async def join(self, request: web.Request, caller: Identity | None) -> Any:
        body = await json_body(request)
        principals = body.get("principals", [])
        if not isinstance(principals, list) or not all(isinstance(p, str) for p in principals):
            raise BadParameter("principals must be a list of strings")
        bundle = await self.server.join(
            token_name=required_str(body, "token"),
            role=required_str(body, "role"),
            public_key=required_str(body, "public_key"),
            name=required_str(body, "name"),
            principals=principals,
            client_addr=request.remote or "",
        )
        return bundle.to_dict()

    async def add_user(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        roles = str_list(body, "roles")
        traits = body.get("traits", {})
        if not isinstance(traits, dict):
            raise BadParameter("traits must be a mapping of lists of strings")
        url = await self.server.add_user(required_str(body, "name"), roles, traits, caller.username)
        return {"invite_url": url}

    async def reset_user(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        url = await self.server.reset_user(request.match_info["name"], caller.username)
        return {"invite_url": url}

    async def add_token(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        ttl = parse_duration(str(body.get("ttl", "30m")))
        token = await self.server.add_token(str_list(body, "roles"), ttl, caller.username)
        return {
            "token": token.metadata.name,
            "expires": token.metadata.expires.isoformat() if token.metadata.expires else None,
            "roles": list(token.spec.roles),
            "ca_pin": self.server.ca_pin(),
            "auth_addr": self.server.auth_addr,
        }

    async def export_authority(self, request: web.Request, caller: Identity | None) -> Any:
        # Public keys only: anyone may read them (sshd hosts fetch them to trust users).
        text = self.server.export_authority(request.match_info["type"])
        return web.Response(text=text if text.endswith("\n") else text + "\n")

    async def search_events(self, request: web.Request, caller: Identity | None) -> Any:
        q = request.query
        events, cursor = await self.server.audit.search(
            since=_time(q.get("since")),
            until=_time(q.get("until")),
            event_types=[e for e in q.get("event", "").split(",") if e],
            user=q.get("user") or None,
            node=q.get("node") or None,
            limit=min(int(q.get("limit", "100") or 100), 10000),
            cursor=q.get("cursor") or None,
        )
        return {"events": events, "cursor": cursor}

    async def record_event(self, request: web.Request, caller: Identity | None) -> Any:
        """Events from a proxy or node; auth stamps time, code, id and the sender.

        One event ({"event", "fields"}) or several in order ({"events": [...]}, at most
        MAX_EVENTS_PER_CALL): all are checked before any is stored, and stored in order.
        """
        assert caller is not None
        body = await json_body(request)
        items = body["events"] if "events" in body else [body]
        if not isinstance(items, list) or len(items) > MAX_EVENTS_PER_CALL:
            raise BadParameter(f'"events" must be a list of at most {MAX_EVENTS_PER_CALL}')
        checked = [self._checked_event(caller, item) for item in items]
        await asyncio.gather(
            *(self.server.audit.emit(event, **fields) for event, fields in checked)
        )
        return None

    def _checked_event(self, caller: Identity, item: Any) -> tuple[str, dict[str, Any]]:
        if not isinstance(item, dict):
            raise BadParameter("each audit event must be a mapping with event and fields")
        event = required_str(item, "event")
        if event not in EVENT_CODES:
            raise BadParameter(f'unknown audit event "{event}"')
        fields = item.get("fields", {})
        if not isinstance(fields, dict) or any(
            key in ("event", "code", "time", "uid", "server_name") for key in fields
        ):
            raise BadParameter("audit fields must be a mapping without reserved keys")
        fields = dict(fields)
        server = caller.username
        claimed = fields.pop("server", None)
        if claimed is not None:
            # A service may name its own role as the server that decided ("proxy": the
            # proxy terminated SSH for an agentless node); its name goes in server_name.
            if claimed not in {role.lower() for role in caller.roles}:
                raise BadParameter(f'audit field "server" must be your role, not "{claimed}"')
            server, fields["server_name"] = claimed, caller.username
        return event, {**fields, "server": server}

    async def list_resources(self, request: web.Request, caller: Identity | None) -> Any:
        kind = _kind(request)
        items = await self.server.get_resources(kind, None)
        return json.loads(dump(items, "json"))

    async def get_resource(self, request: web.Request, caller: Identity | None) -> Any:
        items = await self.server.get_resources(_kind(request), request.match_info["name"])
        return json.loads(dump(items, "json"))

    async def rm_resource(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        await self.server.delete_resource(
            _kind(request), request.match_info["name"], caller.username
        )
        return None

    async def put_resource(self, request: web.Request, caller: Identity | None) -> Any:
        body = await json_body(request)
        document = body.get("resource")
        resource = from_dict(document)
        upsert = bool(body.get("upsert", False))
        caller = await self.authorizer.check(
            caller, resource.kind, "update" if upsert else "create"
        )
        if isinstance(resource, Lock) and not resource.spec.created_by:
            spec = resource.spec.model_copy(update={"created_by": caller.username})
            resource = resource.model_copy(update={"spec": spec})
        saved = await self.server.put_resource(resource, caller.username, upsert)
        return to_dict(saved)

    async def heartbeat(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        seconds = body.get("ttl_seconds", 30)
        if not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
            raise BadParameter("ttl_seconds must be a number of seconds up to 3600")
        if "kube_cluster" in body:
            cluster = from_dict(body.get("kube_cluster"))
            if not isinstance(cluster, KubeCluster) or not caller.is_service(SYSTEM_KUBE):
                raise BadParameter("a kube_cluster heartbeat comes from a kube service")
            await self.server.kube_heartbeat(caller, cluster, timedelta(seconds=seconds))
            return None
        node = from_dict(body.get("node"))
        if not isinstance(node, Node):
            raise BadParameter("a heartbeat carries a node resource")
        await self.server.heartbeat(caller, node, timedelta(seconds=seconds))
        return None

    async def my_kube_clusters(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        return [to_dict(c) for c in await self.server.kube_clusters_for(caller)]

    async def my_nodes(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        return [to_dict(n) for n in await self.server.nodes_for(caller)]

    async def watch(self, request: web.Request, caller: Identity | None) -> Any:
        """A snapshot of the asked kinds, then every change, as JSON lines.

        Proxies and nodes keep their views of roles, locks and nodes with this. A
        `{"type": "ping"}` line every few seconds lets them tell a quiet stream from a
        dead one.
        """
        kinds = [k for k in request.query.get("kinds", "").split(",") if k]
        if not kinds:
            raise BadParameter("name the kinds to watch: ?kinds=role,lock")
        for kind in kinds:
            caller = await self.authorizer.check(caller, kind, "list")
        stores = {kind: self.server.store_for(kind) for kind in kinds}
        by_prefix = {store.prefix: kind for kind, store in stores.items()}
        revision = await self.server.backend.current_revision()
        # get_resources strips CA private keys: they never leave auth.
        snapshot = {
            kind: [to_dict(r) for r in await self.server.get_resources(kind, None)]
            for kind in kinds
        }
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await _send(response, {"type": "snapshot", "revision": revision, "items": snapshot})
        events = self.server.backend.watch(list(by_prefix), revision)
        next_event = asyncio.ensure_future(anext(events))
        try:
            while True:
                done, _ = await asyncio.wait({next_event}, timeout=WATCH_PING_SECONDS)
                if not done:
                    await _send(response, {"type": "ping"})
                    continue
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    break
                next_event = asyncio.ensure_future(anext(events))
                prefix = next(p for p in by_prefix if event.item.key.startswith(p))
                kind = by_prefix[prefix]
                name = event.item.key[len(prefix) :]
                if event.type is EventType.DELETE:
                    await _send(response, {"type": "delete", "kind": kind, "name": name})
                else:
                    resource = stores[kind].decode(event.item)
                    if kind == "cert_authority":
                        resource = resource.without_secrets()
                    await _send(
                        response, {"type": "put", "kind": kind, "resource": to_dict(resource)}
                    )
        except ConnectionResetError:
            pass  # the watcher went away
        finally:
            next_event.cancel()
            await asyncio.gather(next_event, return_exceptions=True)
            await events.aclose()  # type: ignore[attr-defined]
        return response


# Watchers measure how fresh their view is by these (strict locking), so keep it short.
WATCH_PING_SECONDS = 1.0


async def _send(response: web.StreamResponse, message: dict[str, Any]) -> None:
    await response.write(json.dumps(message).encode() + b"\n")


@web.middleware
async def _internal_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except CertgateError as exc:
        return web.json_response(to_json(exc), status=exc.http_status)
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal", "message": "internal error: see the auth server's log"},
            status=500,
        )


def _with_kind(identity: Identity, kind: str) -> Identity:
    return replace(identity, kind=kind)


def _kind(request: web.Request) -> str:
    return request.path.split("/")[3]


def _ttl(body: dict[str, Any]) -> Any:
    value = body.get("ttl")
    return parse_duration(str(value)) if value else None


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadParameter(f'invalid time "{text}": use RFC 3339') from exc
