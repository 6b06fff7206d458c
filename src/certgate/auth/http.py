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
import contextlib
import difflib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509
from pydantic import BaseModel, ValidationError

from certgate.api import events as events_catalogue
from certgate.api.authority import CertAuthority
from certgate.api.certs import (
    identity_from_x509,
    issued_by,
    load_x509_certificate,
    verify_x509_client_cert,
)
from certgate.api.codec import describe_validation_error, dump, from_dict, to_dict
from certgate.api.duration import parse_duration
from certgate.api.identity import SYSTEM_KUBE, SYSTEM_PROXY, Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock, lock_matches, lock_message
from certgate.api.names import check_name, shown, utc_time
from certgate.api.node import Node
from certgate.auth import permissions as perm
from certgate.auth.audit_intake import checked_event
from certgate.auth.http_access import add_access_routes
from certgate.auth.http_agentless import add_agentless_routes
from certgate.auth.http_body import (
    MAX_BODY_BYTES,
    json_body,
    query_int,
    required_str,
    str_list,
)
from certgate.auth.http_mfa import add_mfa_routes
from certgate.auth.http_nodes import add_node_routes
from certgate.auth.http_recordings import add_recording_routes
from certgate.auth.http_requests import add_request_routes
from certgate.auth.http_sessions import add_session_routes
from certgate.auth.http_user_certs import add_user_cert_routes
from certgate.auth.permissions import Authorizer
from certgate.auth.server import AuthServer
from certgate.auth.session_hosts import SessionHosts
from certgate.auth.watch_channel import (
    LineSink,
    SocketLines,
    StreamedLines,
    answer_requests,
    open_socket,
    wants_socket,
)
from certgate.auth.watch_hub import Subscription, WatchHub
from certgate.backend.base import BEHIND_UNAVAILABLE, EventType, Item
from certgate.backend.write_marks import track_store_writes
from certgate.errors import (
    NOT_APPLIED_HEADER,
    AccessDenied,
    BadParameter,
    CertgateError,
    ConnectionProblem,
    to_json,
)
from certgate.recording.store import RecordingStore
from certgate.services.throttled_log import ThrottledWarning

log = logging.getLogger("certgate.auth")

FORWARDED_CERT = "Certgate-Forwarded-Cert"
FORWARDED_ADDR = "Certgate-Client-Addr"
# The most audit events one call from a service carries.
MAX_EVENTS_PER_CALL = 1000
# Client certificates whose parsed identity is kept (each a few hundred bytes, and its
# DER). Above the certificates one auth sees in a heartbeat interval (10,000 nodes, one
# each, plus users and proxies): kept oldest-first, a cache smaller than the nodes that
# beat in turn missed on every beat (a parse and a signature check each, 14 % of auth's
# CPU at 10,000 nodes with 4,096).
PEER_CACHE_SIZE = 32_768
# The most resources one `cgctl create` may carry (they are written in one transaction).
MAX_RESOURCES_PER_CALL = 100
# Longest password and one-time code taken: argon2 of a megabyte is CPU for nothing.
MAX_SECRET_CHARS = 1024
# How long stopping waits for the watch streams it ended to finish.
WATCHES_STOP_SECONDS = 3.0
# Bad stored items (key, revision) already audited by this process, at most.
AUDITED_SKIPS_SIZE = 4096

Handler = Callable[[web.Request, Identity | None], Awaitable[Any]]


class AuthAPI:
    def __init__(
        self, server: AuthServer, metrics: Any = None, recordings: RecordingStore | None = None
    ) -> None:
        self.server = server
        self.recordings = recordings  # session recordings (http_recordings.py)
        # Which service hosts each session: the one that may upload its recording.
        self.session_hosts = SessionHosts(server)
        self.authorizer = Authorizer(
            server.load_roles,
            server.role_sets,
            check_not_locked=self._check_not_locked,
            load_user=server.user_with_roles,
            load_grants=server.granted_roles,
        )
        self.metrics = metrics
        # A failing store or bucket fails every call alike: one log line per 10 s.
        self._unreachable = ThrottledWarning(log)
        # Every watch stream of a set of kinds shares one store watch (watch_hub.py).
        self._watches = WatchHub(server.backend)
        self._host_ca_certs: list[x509.Certificate] | None = None
        # Verified client certificate (DER) -> who it speaks for. The TLS handshake
        # verified it; what it says never changes, so it is parsed once, not per request.
        self._peers: dict[bytes, Identity] = {}
        # Stored items that do not decode: met (to audit) and audited, by key and revision.
        self._unaudited_skips: dict[tuple[str, int], str] = {}
        self._audited_skips: set[tuple[str, int]] = set()

    # caller identity ----------------------------------------------------------------

    def _host_cas(self) -> list[x509.Certificate]:
        if self._host_ca_certs is None:
            keys = self.server.issuer.authorities["host_tls"].spec.active_keys
            self._host_ca_certs = [load_x509_certificate(k.public) for k in keys]
        return self._host_ca_certs

    def _peer(self, request: web.Request) -> Identity | None:
        """The identity of the client certificate the TLS handshake verified, if any."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            return None
        identity = self._peers.get(der)
        if identity is None:
            cert = x509.load_der_x509_certificate(der)
            # The kind comes from which CA key signed the certificate, never from its
            # content or its issuer's name (two CAs may share a name).
            is_service = issued_by(cert, self._host_cas())
            identity = _with_kind(identity_from_x509(cert), "service" if is_service else "user")
            if len(self._peers) >= PEER_CACHE_SIZE:
                del self._peers[next(iter(self._peers))]  # the oldest
            self._peers[der] = identity
        return identity

    async def _check_not_locked(
        self,
        user: str,
        roles: tuple[str, ...] | list[str],
        request_ids: tuple[str, ...] = (),
        issued: datetime | None = None,
    ) -> None:
        """The lock check of every user call, audited when it refuses: a locked user's
        `cgsh ls` is an attempt an admin must be able to find."""
        try:
            await self.server.check_not_locked(user, roles, request_ids, issued)
        except AccessDenied as exc:
            await self.server.audit.emit(
                "session.rejected", user=user, kind="api", reason=exc.message, server="auth"
            )
            exc.audited = True
            raise

    async def _watch_refusal(self, caller: Identity | None, lock: Lock | None) -> str | None:
        """Why a user's open watch must end now, or None: `lock` (just written) or a
        lock in auth's cache covers them. Audited like the refusal of any call."""
        if caller is None:
            return None
        if lock is not None and lock_matches(
            lock,
            user=caller.username,
            roles=caller.roles,
            request_ids=caller.request_ids,
            now=self.server.clock.now(),
            issued=caller.issued,
        ):
            reason = lock_message(lock)
            await self.server.audit.emit(
                "session.rejected", user=caller.username, kind="api", reason=reason,
                server="auth",
            )  # fmt: skip
            return reason
        try:
            await self._check_not_locked(
                caller.username, caller.roles, caller.request_ids, caller.issued
            )
        except AccessDenied as exc:
            return exc.message
        return None

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
            writes = track_store_writes()
            try:
                caller = self.caller(request)
                try:
                    if resource is not None:
                        caller = await self.authorizer.check(caller, resource, verb)
                    result = await fn(request, caller)
                except AccessDenied as exc:  # the roles, or the call itself (a review)
                    await self._audit_refusal(request, caller, resource or "", verb, exc)
                    raise
            except ValidationError as exc:
                # A model built from request input that slipped past the route's checks.
                bad = BadParameter(describe_validation_error(exc.title.lower(), "", exc))
                return web.json_response(to_json(bad), status=bad.http_status)
            except CertgateError as exc:
                if self.metrics:
                    self.metrics.errors.labels(kind=exc.kind).inc()
                headers = {}
                if isinstance(exc, ConnectionProblem):  # the store or the bucket failing
                    self._unreachable.warn(exc.message)
                    if not writes.tried:
                        headers[NOT_APPLIED_HEADER] = "1"  # another auth may take it
                return web.json_response(to_json(exc), status=exc.http_status, headers=headers)
            if isinstance(result, web.StreamResponse):
                return result
            if result is None:
                return web.Response(status=204)
            return web.json_response(result)

        return handle

    async def _audit_refusal(
        self,
        request: web.Request,
        caller: Identity | None,
        resource: str,
        verb: str,
        exc: AccessDenied,
    ) -> None:
        """A call the roles refuse (`cgctl users add` by an auditor, a service calling
        what it may not) is an attempt an admin must be able to find. Callers without a
        certificate are not audited: anyone can knock, and their knocks would fill the
        log (they are counted in certgate_errors_total)."""
        if exc.audited or caller is None:
            return
        await self.server.audit.emit(
            "session.rejected",
            user=caller.username,
            kind="api",
            server="auth",
            reason=exc.message,
            method=request.method,
            path=request.path,
            resource=resource,
            verb=verb,
        )
        exc.audited = True

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_internal_errors])
        # Called as the server stops, before it waits for requests in progress.
        app.on_shutdown.append(self._end_watches)
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
        r.add_post("/v1/users/{name}/unlock", add("user", "update", self.unlock_user))
        r.add_patch("/v1/users/{name}", add("user", "update", self.update_user))
        r.add_post("/v1/tokens", add("token", "create", self.add_token))
        r.add_get("/v1/authorities/{type}/export", add(None, "", self.export_authority))
        r.add_get("/v1/events", add("event", "list", self.search_events))
        r.add_post("/v1/events", add(perm.AUDIT_WRITE, "create", self.record_event))
        for kind in (
            "role",
            "user",
            "token",
            "lock",
            "node",
            "cert_authority",
            "access_request",
            "kube_cluster",
        ):
            r.add_get(f"/v1/resources/{kind}", add(kind, "list", self.list_resources))
            r.add_get(f"/v1/resources/{kind}/{{name}}", add(kind, "read", self.get_resource))
            r.add_delete(f"/v1/resources/{kind}/{{name}}", add(kind, "delete", self.rm_resource))
        r.add_post("/v1/resources", add(None, "", self.put_resource))
        r.add_get("/v1/watch", add(None, "", self.watch))
        r.add_post("/v1/nodes/heartbeat", add(perm.HEARTBEAT, "update", self.heartbeat))
        r.add_get("/v1/my/kube_clusters", add(perm.SELF, "read", self.my_kube_clusters))
        add_node_routes(self, r)
        add_recording_routes(self, r)
        add_session_routes(self, r)
        add_agentless_routes(self, r)
        add_request_routes(self, r)
        add_user_cert_routes(self, r)
        add_access_routes(self, r)
        add_mfa_routes(self, r)
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
        # Checked before the login checker writes an attempt or an audit event for it.
        username = _checked_name(body.get("user"), "user name", "login", request)
        bundle = await self.server.login(
            username=username,
            password=required_str(body, "password", MAX_SECRET_CHARS),
            otp=required_str(body, "otp", MAX_SECRET_CHARS),
            public_key=required_str(body, "public_key"),
            ttl=_ttl(body),
            client_addr=self.client_addr(request),
        )
        if self.metrics:
            self.metrics.logins.inc()
            self.metrics.certs_issued.inc()
        answer = bundle.to_dict()
        # Users whose roles say `request_access: always` request at once (cgsh login).
        policy = await self.server.request_policy(bundle.identity)
        if policy.request_access == "always":
            answer["request_access"] = {
                "mode": "always",
                "roles": policy.requestable_roles(),
                # A role also says `reason`: cgsh asks for one before requesting.
                "reason_required": policy.reason_required,
                "prompt": policy.request_prompt,
            }
        return answer

    async def renew(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        if caller.kind != "user":
            raise AccessDenied("access denied: only users renew certificates here")
        body = await json_body(request)
        public_key = required_str(body, "public_key")
        # Access requests to carry: those named (none: back to standing roles), else the
        # ones the presented certificate carries, checked again.
        request_ids = str_list(body, "request_ids") if "request_ids" in body else None
        if request_ids is None:
            request_ids = list(caller.request_ids)
        if request_ids:
            bundle = await self.server.assume_requests(caller, public_key, request_ids, _ttl(body))
        else:
            standing = replace(caller, request_ids=(), resources=())
            bundle = await self.server.renew(standing, public_key, _ttl(body))
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
            required_str(body, "password", MAX_SECRET_CHARS),
            required_str(body, "otp", MAX_SECRET_CHARS),
            self.client_addr(request),
        )
        return None

    async def join(self, request: web.Request, caller: Identity | None) -> Any:
        body = await json_body(request)
        # Checked before a failed join is audited with the name in it.
        name = _checked_name(body.get("name"), "host name", "join", request)
        principals = str_list(body, "principals", max_items=32, max_len=253)
        bundle = await self.server.join(
            token_name=required_str(body, "token", 128),
            role=required_str(body, "role", 16),
            public_key=required_str(body, "public_key"),
            name=name,
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
        name = check_name(body.get("name"), "user name")
        for role in roles:
            check_name(role, "role name")
        url = await self.server.add_user(name, roles, traits, caller.username)
        return {"invite_url": url}

    async def reset_user(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        url = await self.server.reset_user(request.match_info["name"], caller.username)
        return {"invite_url": url}

    async def update_user(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        roles = str_list(body, "roles") if "roles" in body else None
        traits = body.get("traits")
        if traits is not None and (
            not isinstance(traits, dict)
            or not all(
                isinstance(v, list) and all(isinstance(i, str) for i in v) for v in traits.values()
            )
        ):
            raise BadParameter("traits must be a mapping of lists of strings")
        user = await self.server.update_user(
            request.match_info["name"], roles, traits, caller.username
        )
        return to_dict(user)

    async def unlock_user(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        await self.server.unlock_user(request.match_info["name"], caller.username)
        return None

    async def add_token(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        ttl = parse_duration(str(body.get("ttl", "30m")))
        uses = body.get("uses")
        if uses is not None and (not isinstance(uses, int) or isinstance(uses, bool)):
            raise BadParameter("uses must be a whole number of joins")
        name = body.get("name") or ""
        if not isinstance(name, str):
            raise BadParameter("name must be a host name")
        token = await self.server.add_token(
            str_list(body, "roles"), ttl, caller.username, uses=uses, name=name
        )
        return {
            "token": token.metadata.name,
            "expires": token.metadata.expires.isoformat() if token.metadata.expires else None,
            "roles": list(token.spec.roles),
            "uses": token.spec.uses,
            "name": token.spec.name,
            "ca_pin": self.server.ca_pin(),
            "auth_addr": self.server.auth_addr,
        }

    async def export_authority(self, request: web.Request, caller: Identity | None) -> Any:
        # Public keys only: anyone may read them (sshd hosts fetch them to trust users).
        text = self.server.export_authority(request.match_info["type"])
        return web.Response(text=text if text.endswith("\n") else text + "\n")

    async def search_events(self, request: web.Request, caller: Identity | None) -> Any:
        q = request.query
        event_types = [e for e in q.get("event", "").split(",") if e]
        for event_type in event_types:
            if event_type not in events_catalogue.CATALOGUE:
                # A typo would otherwise find nothing, and look like no such events.
                close = difflib.get_close_matches(event_type, events_catalogue.CATALOGUE, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else " (docs/audit.md lists them)"
                raise BadParameter(f'unknown event type "{event_type[:64]}"{hint}')
        since, until = _time(q.get("since")), _time(q.get("until"))
        if since is not None and until is not None and since > until:
            raise BadParameter("since must be before until: this search can find nothing")
        events, cursor = await self.server.audit.search(
            since=since,
            until=until,
            event_types=event_types,
            user=q.get("user") or None,
            node=q.get("node") or None,
            limit=query_int(request, "limit", 100, 10000),
            cursor=q.get("cursor") or None,
        )
        return {"events": events, "cursor": cursor}

    async def record_event(self, request: web.Request, caller: Identity | None) -> Any:
        """Events from a proxy, node or kube service (auth/audit_intake.py checks them).

        One event ({"event", "fields"}) or several in order ({"events": [...]}, at most
        MAX_EVENTS_PER_CALL): all are checked before any is stored, and stored in order.
        An event resent with an id already stored (the sender never heard it was) is
        not stored twice.
        """
        assert caller is not None
        body = await json_body(request)
        items = body["events"] if "events" in body else [body]
        if not isinstance(items, list) or len(items) > MAX_EVENTS_PER_CALL:
            raise BadParameter(f'"events" must be a list of at most {MAX_EVENTS_PER_CALL}')
        checked = [self._checked_event(caller, item) for item in items]
        # Before the events are stored: if this fails, the sender sends them all again.
        await self.session_hosts.claim_announced(caller, checked)
        await asyncio.gather(*(self.server.audit.record(event) for event in checked))
        return None

    def _checked_event(self, caller: Identity, item: Any) -> dict[str, Any]:
        return checked_event(caller, item, self.server.clock.now())

    async def list_resources(self, request: web.Request, caller: Identity | None) -> Any:
        kind = _kind(request)
        items = await self._readable(kind)
        return json.loads(dump(items, "json"))

    async def _readable(self, kind: str) -> list[BaseModel]:
        """Every stored `kind` that still decodes (a bad one is logged and left out, so
        one poisoned item cannot fail every list, snapshot and watch of its kind)."""
        items = await self.server.store_for(kind).list_readable(self._note_skipped)
        await self._audit_skips()
        return [_without_secrets(kind, item) for item in items]

    def _note_skipped(self, item: Item, exc: Exception) -> None:
        ref = (item.key, item.revision)
        if ref not in self._audited_skips:
            self._unaudited_skips[ref] = " ".join(str(exc).split())[:200]

    async def _audit_skips(self) -> None:
        """One audit event per bad stored item (and revision) this process meets, not one
        per watcher that reconnects past it."""
        while self._unaudited_skips:
            (key, revision), error = self._unaudited_skips.popitem()
            if len(self._audited_skips) >= AUDITED_SKIPS_SIZE:
                self._audited_skips.clear()
            self._audited_skips.add((key, revision))
            await self.server.audit.emit(
                "store.item.skipped", key=key[:200], revision=revision, error=error
            )

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
        """One resource ({"resource": doc}) or several ({"resources": [doc, ...]}).

        Several are all or nothing: every one is parsed and authorized, then auth
        writes them in one transaction (or none, with the reason for the first refusal).
        """
        body = await json_body(request)
        several = "resources" in body
        documents = body["resources"] if several else [body.get("resource")]
        if not isinstance(documents, list) or not 0 < len(documents) <= MAX_RESOURCES_PER_CALL:
            raise BadParameter(
                f'"resources" must be a list of 1 to {MAX_RESOURCES_PER_CALL} resources'
            )
        upsert = bool(body.get("upsert", False))
        resources = []
        by = ""
        for document in documents:
            resource = from_dict(document)
            checked = await self.authorizer.check(
                caller, resource.kind, "update" if upsert else "create"
            )
            by = checked.username
            if isinstance(resource, Lock) and not resource.spec.created_by:
                spec = resource.spec.model_copy(update={"created_by": by})
                resource = resource.model_copy(update={"spec": spec})
            resources.append(resource)
        saved = await self.server.put_resources(resources, by, upsert)
        return [to_dict(r) for r in saved] if several else to_dict(saved[0])

    async def heartbeat(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        await self._beat(caller, await json_body(request))

    async def _beat(self, caller: Identity, body: dict[str, Any]) -> None:
        """A heartbeat's body, from POST /v1/nodes/heartbeat or the watch socket."""
        if (behind := self.server.backend.seconds_behind()) >= BEHIND_UNAVAILABLE:
            raise ConnectionProblem(
                f"auth cannot reach its store (not read for {behind:.0f}s): heartbeat not"
                " stored; another auth may take it"
            )
        seconds = body.get("ttl_seconds", 30)
        if not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
            raise BadParameter("ttl_seconds must be a number of seconds up to 3600")
        if "kube_cluster" in body:
            cluster = from_dict(body.get("kube_cluster"))
            if not isinstance(cluster, KubeCluster) or not caller.is_service(SYSTEM_KUBE):
                raise BadParameter("a kube_cluster heartbeat comes from a kube service")
            await self.server.kube_heartbeat(caller, cluster, timedelta(seconds=seconds))
            return
        node = from_dict(body.get("node"))
        if not isinstance(node, Node):
            raise BadParameter("a heartbeat carries a node resource")
        await self.server.heartbeat(caller, node, timedelta(seconds=seconds))

    async def my_kube_clusters(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        return [to_dict(c) for c in await self.server.kube_clusters_for(caller)]

    async def _end_watches(self, app: web.Application) -> None:
        self._watches.close()
        if not await self._watches.drained(WATCHES_STOP_SECONDS):
            log.warning("watch streams still open %gs after stopping", WATCHES_STOP_SECONDS)

    async def watch(self, request: web.Request, caller: Identity | None) -> Any:
        """A snapshot of the asked kinds, then every change, as JSON lines.

        Proxies and nodes keep their views of roles, locks and nodes with this. A
        `{"type": "ping"}` line every few seconds lets them tell a quiet stream from a
        dead one.
        """
        kinds = [k for k in request.query.get("kinds", "").split(",") if k]
        if not kinds:
            raise BadParameter("name the kinds to watch: ?kinds=role,lock")
        ping = _ping_seconds(request.query.get("ping", ""))
        for kind in kinds:
            caller = await self.authorizer.check(caller, kind, "list")
        stores = {kind: self.server.store_for(kind) for kind in kinds}
        by_prefix = {store.prefix: kind for kind, store in stores.items()}
        # A user's stream follows the locks too, whatever it asked for: a lock that
        # comes to cover the user ends it (the lock applies to open streams, not only
        # at the next reconnect). Services are not users: their streams are not cut.
        guarded = caller is not None and caller.kind != "service"
        lock_prefix = self.server.store_for("lock").prefix
        watched = list(by_prefix)
        if guarded and lock_prefix not in by_prefix:
            watched.append(lock_prefix)
        async with self._watches.subscribe(watched) as events:  # before the read
            revision, items = await self._watches.memo(
                watched, tuple(kinds), lambda: self._snapshot(kinds)
            )
            head = json.dumps({"type": "snapshot", "revision": revision})[:-1]
            snapshot = f'{head}, "items": '.encode() + items + b"}\n"
            follow = functools.partial(
                self._follow, events, kinds, stores, by_prefix, caller if guarded else None, ping
            )
            if wants_socket(request):
                return await self._watch_socket(request, caller, snapshot, follow)
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            await response.write(snapshot)
            await follow(StreamedLines(request, response))
        return response

    async def _watch_socket(
        self,
        request: web.Request,
        caller: Identity | None,
        snapshot: bytes,
        follow: Callable[[LineSink], Awaitable[None]],
    ) -> web.WebSocketResponse:
        """The watch as a WebSocket that also takes the watcher's heartbeats
        (watch_channel.py): the stream and the requests run side by side until either
        ends, and the socket ends with them."""
        socket = open_socket()
        await socket.prepare(request)
        sink = SocketLines(request, socket)

        async def handle(kind: str, body: dict[str, Any]) -> None:
            # Checked per request, as POST /v1/nodes/heartbeat is: the permission and
            # then whether this identity still holds the name it announces.
            if caller is None:
                raise AccessDenied("access denied: a heartbeat needs a service certificate")
            await self._beat(await self.authorizer.check(caller, perm.HEARTBEAT, "update"), body)

        try:
            await sink.write(snapshot)
        except ConnectionResetError:
            return socket
        stream = asyncio.ensure_future(follow(sink))
        requests = asyncio.ensure_future(answer_requests(socket, handle))
        try:
            await asyncio.wait({stream, requests}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stream_ended = stream.done()
            for task in (stream, requests):
                task.cancel()
            await asyncio.gather(stream, requests, return_exceptions=True)
        if stream_ended and not socket.closed:
            # The stream ended as auth stops: say so with a close frame.
            with contextlib.suppress(ConnectionResetError):
                await socket.close(code=1001, message=b"auth is stopping")
        return socket

    async def _snapshot(self, kinds: list[str]) -> bytes:
        """The items of a watch snapshot, as JSON; _readable strips CA private keys
        (they never leave auth) and skips bad items."""
        items = {kind: [to_dict(r) for r in await self._readable(kind)] for kind in kinds}
        return json.dumps(items).encode()

    async def _follow(
        self,
        events: Subscription,
        kinds: list[str],
        stores: dict[str, Any],
        by_prefix: dict[str, str],
        guarded: Identity | None,
        ping: float,
        sink: LineSink,
    ) -> None:
        """Relay `events` to the stream; `guarded` is the user whose stream a lock ends;
        a ping after `ping` seconds without a line."""
        lock_store = self.server.store_for("lock")
        lock_prefix = lock_store.prefix
        next_event = asyncio.ensure_future(anext(events))
        # From here on the status line is sent: a failure can only end the stream (the
        # watcher reconnects and takes a fresh snapshot), never turn into a 500 written
        # into the middle of it.
        try:
            while True:
                done, _ = await asyncio.wait({next_event}, timeout=ping)
                if not done:
                    # Each ping also re-checks auth's lock cache: a lock written by
                    # another auth process arrives there, if not (yet) in this stream.
                    if guarded and (reason := await self._watch_refusal(guarded, None)):
                        await _cut(sink, reason)
                        break
                    await sink.write(_ping_line(self.server.backend.seconds_behind()))
                    continue
                try:
                    first = next_event.result()
                except StopAsyncIteration:
                    break
                # The events queued behind it go out in the same write: one TLS record
                # for the watcher to read and parse, not one per heartbeat (a proxy's
                # stream at 10,000 nodes).
                lines: list[bytes] = []
                cut: str | None = None
                for event in [first, *events.ready()]:
                    if guarded and event.item.key.startswith(lock_prefix):
                        written = None
                        if event.type is not EventType.DELETE:
                            written = lock_store.decode_or_skip(event.item, self._note_skipped)
                        if isinstance(written, Lock) and (
                            reason := await self._watch_refusal(guarded, written)
                        ):
                            cut = reason  # what came before it is sent, nothing after
                            break
                        if lock_prefix not in by_prefix:
                            continue  # followed for the cut only: not what the caller asked
                    prefix = next(p for p in by_prefix if event.item.key.startswith(p))
                    kind = by_prefix[prefix]
                    name = event.item.key[len(prefix) :]
                    if event.type is EventType.DELETE:
                        lines.append(_line({"type": "delete", "kind": kind, "name": name}))
                        continue
                    resource = stores[kind].decode_or_skip(event.item, self._note_skipped)
                    if resource is None:  # a bad item is skipped (and audited), the stream goes on
                        await self._audit_skips()
                    else:
                        resource = _without_secrets(kind, resource)
                        lines.append(
                            _line({"type": "put", "kind": kind, "resource": to_dict(resource)})
                        )
                if lines:
                    await sink.write(b"".join(lines))
                if cut is not None:
                    await _cut(sink, cut)
                    break
                next_event = asyncio.ensure_future(anext(events))
        except ConnectionResetError:
            pass  # the watcher went away
        except CertgateError as exc:  # compacted past it, fell behind, store gone
            log.warning("watch of %s ended: %s", ",".join(kinds), exc)
            sink.abort()
        except Exception:
            log.exception("watch of %s ended by an error", ",".join(kinds))
            sink.abort()
        finally:
            next_event.cancel()
            await asyncio.gather(next_event, return_exceptions=True)


async def _cut(sink: LineSink, reason: str) -> None:
    """End a watch stream whose caller may no longer have it, saying why; the
    watcher's reconnect is then refused like any call of theirs."""
    with contextlib.suppress(ConnectionResetError):
        await sink.write(_line({"type": "closed", "reason": reason}))
    sink.abort()


# Watchers measure how fresh their view is by these (strict locking), so keep it short;
# a watcher may ask for fewer (`?ping=5`: rpc/watcher.py ping_seconds), up to the cap.
WATCH_PING_SECONDS = 1.0
MAX_WATCH_PING_SECONDS = 10.0


def _ping_seconds(asked: str) -> float:
    if not asked:
        return WATCH_PING_SECONDS
    try:
        seconds = float(asked)
    except ValueError:
        raise BadParameter(f"ping must be a number of seconds, got {asked[:20]!r}") from None
    if not WATCH_PING_SECONDS <= seconds <= MAX_WATCH_PING_SECONDS:
        raise BadParameter(
            f"ping must be between {WATCH_PING_SECONDS:g} and {MAX_WATCH_PING_SECONDS:g} seconds"
        )
    return seconds


# A thousand a second at 10,000 nodes (a stream each, a ping every 5 s): made once.
PING_LINE = json.dumps({"type": "ping"}).encode() + b"\n"


def _ping_line(behind: float) -> bytes:
    """A ping says "nothing changed", true only as far as auth has read its store: an
    auth cut off from a shared store says how many seconds behind it is, and the
    watcher counts its view that much older (strict locking, rpc/watcher.py)."""
    if behind <= 0:
        return PING_LINE
    return _line({"type": "ping", "behind": round(behind, 1)})


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _checked_name(value: object, what: str, route: str, request: web.Request) -> str:
    """A valid name from an unauthenticated caller, or a refusal logged in one short line
    (never the name whole: it may be a megabyte)."""
    try:
        return check_name(value, what)
    except BadParameter:
        log.info("refused %s from %s: invalid %s %s", route, request.remote, what, shown(value))
        raise


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


def _without_secrets(kind: str, resource: BaseModel) -> BaseModel:
    # CA private keys never leave auth.
    if isinstance(resource, CertAuthority):
        return resource.without_secrets()
    return resource


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
        return utc_time(datetime.fromisoformat(text))
    except ValueError as exc:
        raise BadParameter(
            f"invalid time {shown(text)}: use RFC 3339 before the year 9001"
        ) from exc
