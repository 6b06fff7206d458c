"""The proxy's HTTPS listener (port 3080): login, invites, and the auth API for users.

    cgsh login  --POST /v1/login-->            proxy --(proxy identity)-->  auth /v1/login
    browser     --/web/...  (webui/: pages over web sessions held here)--> auth, as the user
    remote cgctl/cgsh --/v1/api/<path>-->       proxy --(proxy identity + the user's own
                        (user's client cert)           certificate, forwarded)--> auth /v1/<path>

The proxy never decides for auth: it passes the user's certificate on, and auth checks it
against the user CA itself. Answers are streamed through a chunk at a time, so a long
one (`cgsh play` of a large recording) is never held in the proxy's memory whole.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from importlib import resources
from typing import Any

from aiohttp import web
from cryptography import x509

from certgate.access.cached_access import CachedAccess
from certgate.api.certs import identity_from_x509
from certgate.api.codec import to_dict
from certgate.api.identity import Identity
from certgate.api.json_input import BODY_TIMEOUT, MAX_BODY_BYTES, parse_json
from certgate.errors import AccessDenied, BadParameter, CertgateError, ConnectionProblem, to_json
from certgate.proxy import webui
from certgate.proxy.web_headers import install_security_headers
from certgate.proxy.webui import guard
from certgate.proxy.webui.sessions import IDLE_TIMEOUT, WebSessions
from certgate.rpc.audit import AuditSink
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.srv.authorize import access_authorizer

log = logging.getLogger("certgate.proxy")

FORWARDED_CERT = "Certgate-Forwarded-Cert"
FORWARDED_ADDR = "Certgate-Client-Addr"
# Headers a client may not set itself: they carry identity between proxy and auth.
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
_IDENTITY_HEADERS = {FORWARDED_CERT.lower(), FORWARDED_ADDR.lower()}
# A user who takes longer than this to take one chunk of an answer is gone.
WRITE_TIMEOUT = 30.0
# A forwarded path is printable ASCII: control characters (a decoded %0a) could split
# the request line or a log line on the way to auth.
_PRINTABLE_PATH = re.compile(r"[\x21-\x7e]*")


class ProxyWeb:
    def __init__(
        self,
        auth: AsyncAuthClient,
        cluster_name: str,
        ssh_addr: str,
        kube_addr: str = "",
        *,
        real_certificate: bool = False,
        web_idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._auth = auth
        self.cluster_name = cluster_name
        self.ssh_addr = ssh_addr
        # A configured certificate (not the cluster's own): HSTS, and no --insecure.
        self.real_certificate = real_certificate
        self.kube_addr = kube_addr  # kubectl's way in (cgsh kube login writes it)
        # Set once the proxy's live view of roles, locks and nodes is ready.
        self.access: CachedAccess | None = None
        # The proxy's audit spool, set once it is open: refusals decided here are events.
        self.audit: AuditSink | None = None
        # Browser logins (/web): held here, the browser has only a cookie.
        self.web_sessions = WebSessions(auth, idle_timeout=web_idle_timeout)
        # This proxy's SSH listener as dialled from here, once it listens: the web
        # terminal reaches agentless nodes through it, as `cgsh ssh` does.
        self.local_ssh_addr: tuple[str, int] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
        r = app.router
        r.add_get("/v1/ping", self.ping)
        r.add_post("/v1/login", self.login)
        r.add_get("/v1/invites/{token}", self.get_invite)
        r.add_post("/v1/invites/{token}", self.complete_invite)
        r.add_route("*", "/v1/api/{path:.*}", self.forward)
        r.add_get("/v1/ssh/check", self.ssh_check)
        r.add_get("/web/static/{name}", static_file)
        r.add_get("/", self.index)
        install_security_headers(app, hsts=self.real_certificate)
        # After the headers: the player page adds one thing to the CSP (webui/csp.py).
        webui.register(
            app,
            self._auth,
            self.web_sessions,
            self.cluster_name,
            lambda: self.access,
            real_certificate=self.real_certificate,
            jump=lambda: self.local_ssh_addr,
            audit=lambda: self.audit,
        )
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "cluster_name": self.cluster_name,
                "ssh_addr": self.ssh_addr,
                "kube_addr": self.kube_addr,
                "version": "0.1.0",
            }
        )

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=f"certgate proxy for {self.cluster_name}: log in with "
            f"`{self._login_command(request)}`\n"
        )

    def _login_command(self, request: web.Request, user: str = "") -> str:
        """The login command that works as shown from where this page was reached."""
        words = ["cgsh login", f"--proxy=https://{request.host}"]
        if user:
            words.append(f"--user={user}")
        if not self.real_certificate:
            words.append("--insecure")  # first login only: the certificate is then pinned
        return " ".join(words)

    def _user_headers(self, request: web.Request) -> dict[str, str]:
        return {FORWARDED_ADDR: request.remote or ""}

    async def login(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        result = await self._auth.call(
            "POST", "/v1/login", json=body, headers=self._user_headers(request)
        )
        return web.json_response(result)

    async def get_invite(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        return web.json_response(await self._auth.call("GET", f"/v1/invites/{_safe(token)}"))

    async def complete_invite(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        body = await _json_object(request)
        await self._auth.call(
            "POST", f"/v1/invites/{_safe(token)}", json=body, headers=self._user_headers(request)
        )
        return web.Response(status=204)

    async def ssh_check(self, request: web.Request) -> web.Response:
        """May the caller log in as `login` on `node`, and does the node answer?

        cgsh asks before it runs ssh, so a refusal reads as a reason, not as
        "Permission denied (publickey)". The node decides again on its own.
        """
        identity = _client_identity(request)
        if self.access is None:
            raise _Refusal(503, "the proxy is starting; try again")
        target = request.query.get("node", "")
        login = request.query.get("login", "")
        if not target or not login:
            raise BadParameter("name the node and the login: ?node=web-1&login=ubuntu")
        try:
            node = self.access.resolve_node(identity, target)
        except AccessDenied as exc:  # a lock on the user, a strict role cut off
            await self._rejected(request, identity, login, target, exc.message)
            raise
        # The same Authorizer a node (and the agentless forwarder) runs at login, so
        # cgsh shows the reason it would refuse with (srv/authorize.py).
        authorize = access_authorizer(self.access, node.name, node.metadata.labels)
        try:
            await authorize(identity, login, request.remote or "")
        except AccessDenied as exc:
            reason = exc.message.removeprefix("access denied: ")
            if not reason.startswith("access denied to"):
                reason = f"access denied to {login}@{node.name}: {reason}"
            await self._rejected(request, identity, login, node.name, reason)
            raise AccessDenied(reason) from None
        host, _, port = node.spec.addr.rpartition(":")
        try:
            async with asyncio.timeout(5):
                _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
        except (TimeoutError, OSError) as exc:
            raise ConnectionProblem(
                f'node "{node.name}" at {node.spec.addr} is unreachable'
            ) from exc
        return web.json_response({"node": to_dict(node)})

    async def _rejected(
        self, request: web.Request, identity: Identity, login: str, node: str, reason: str
    ) -> None:
        """Audits a refusal decided here: cgsh stops at this answer, so the node never
        sees the attempt and would not record it."""
        await guard.audit_rejected(
            self.audit, user=identity.username, login=login, node=node,
            addr=request.remote or "", reason=reason, kind="ssh",
        )  # fmt: skip

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """The auth API for users, with their certificate passed on for auth to check."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            raise _Refusal(401, "access denied: log in first (cgsh login)")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP_HEADERS
            and k.lower() not in _IDENTITY_HEADERS
            and k.lower().startswith(("content-type", "accept"))
        }
        headers[FORWARDED_CERT] = base64.b64encode(der).decode()
        headers[FORWARDED_ADDR] = request.remote or ""
        path = "/v1/" + request.match_info["path"]
        if not _PRINTABLE_PATH.fullmatch(path):
            raise BadParameter("the path must be printable ASCII")
        # Request bodies are small (client_max_size bounds them); answers may not be.
        body = await _read_body(request) if request.can_read_body else None
        response = web.StreamResponse()
        try:
            async with self._auth.raw_stream(
                request.method,
                path,
                params=list(request.query.items()),
                headers=headers,
                content=body,
            ) as answer:
                response.set_status(answer.status_code)
                response.headers["Content-Type"] = answer.headers.get(
                    "content-type", "application/json"
                )
                length = answer.headers.get("content-length")
                # aiter_bytes() undoes any content-encoding, which changes the length.
                if length is not None and "content-encoding" not in answer.headers:
                    response.content_length = int(length)
                await response.prepare(request)
                async for chunk in answer.aiter_bytes():
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await response.write(chunk)
        except CertgateError as exc:
            if not response.prepared:
                raise  # auth did not answer: the user gets the error as JSON
            # Auth broke off mid-answer. Cut the user's connection too, so a short body
            # cannot pass for a whole one.
            log.warning("answer to %s %s broke off: %s", request.method, path, exc.message)
            _hang_up(request)
            return response
        except (ConnectionError, TimeoutError):
            # The user went away or stopped reading: free the connection to auth.
            _hang_up(request)
            return response
        await response.write_eof()
        return response


_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


async def static_file(request: web.Request) -> web.Response:
    """Our own stylesheets and scripts: the pages' CSP allows no inline ones."""
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    stem = name[: -len(suffix)] if suffix else name
    if suffix not in _STATIC_TYPES or not stem.replace("-", "").isalnum():
        raise web.HTTPNotFound()
    try:
        body = (resources.files("certgate.web") / "static" / name).read_bytes()
    except OSError:
        raise web.HTTPNotFound() from None
    return web.Response(body=body, content_type=_STATIC_TYPES[suffix])


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _client_identity(request: web.Request) -> Identity:
    """The user behind the TLS client certificate (verified against the user CA)."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        raise _Refusal(401, "access denied: log in first (cgsh login)")
    return identity_from_x509(x509.load_der_x509_certificate(der))


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _safe(token: str) -> str:
    # Tokens are hex; refuse anything that could change the path on the way to auth.
    if not token or len(token) > 128 or not token.isalnum():
        raise BadParameter("invite not found or expired: ask your admin for a new one")
    return token


async def _read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, if it is small enough and arrives in time (else a 400)."""
    if request.content_length is not None and request.content_length > limit:
        raise BadParameter(f"request body is larger than {limit // 1024} KiB")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except TimeoutError as exc:
        raise BadParameter("request body did not arrive in time") from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadParameter(f"request body is larger than {limit // 1024} KiB") from exc


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = parse_json(await _read_body(request), request.charset)
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    return body


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPNotFound:
        if request.method != "GET" or not request.path.startswith("/web/"):
            raise
        return await webui.not_found_page(request)
    except web.HTTPException:
        raise
    except _Refusal as exc:
        return web.json_response(
            {"error": "access_denied", "message": exc.message}, status=exc.status
        )
    except CertgateError as exc:
        return web.json_response(to_json(exc), status=exc.http_status)
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal", "message": "internal error: see the proxy's log"}, status=500
        )
