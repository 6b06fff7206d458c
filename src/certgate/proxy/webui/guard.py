"""Who is asking, and may this request change anything: cookies, CSRF, origin.

- The session cookie is `__Host-` prefixed: the browser keeps it only with Secure,
  Path=/ and no Domain, so a sibling host cannot plant or overwrite it. HttpOnly keeps
  it from scripts, SameSite=Strict from every cross-site request.
- Every state-changing request (POST) carries a CSRF token in its form, compared in
  constant time with the session's own; and the browser must say it comes from this
  proxy (Sec-Fetch-Site, else Origin). Two checks, so a browser bug in one
  (SameSite was one for years) is not enough.
- Before login there is no session: the login form is tied to a `__Host-` CSRF cookie
  set with the page (double submit), so another site cannot log a victim into its own
  account either.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable

from aiohttp import web

from certgate.errors import AccessDenied
from certgate.proxy.webui.sessions import WebSession, WebSessions
from certgate.rpc.audit import AuditSink
from certgate.rpc.auth_client import AsyncAuthClient

SESSION_COOKIE = "__Host-certgate_session"
LOGIN_CSRF_COOKIE = "__Host-certgate_login"
SESSIONS_KEY = web.AppKey("web_sessions", WebSessions)
AUTH_KEY = web.AppKey("web_auth", AsyncAuthClient)
# The proxy's audit sink, once its spool is open (refusals decided in the web UI).
AuditGetter = Callable[[], AuditSink | None]
AUDIT_KEY: web.AppKey[AuditGetter] = web.AppKey("web_audit")

log = logging.getLogger("certgate.proxy.web")


async def audit_rejected(
    audit: AuditSink | None, *, user: str, login: str, node: str, addr: str, reason: str,
    kind: str,
) -> None:  # fmt: skip
    """A refusal this proxy decided before dialling any node (which therefore never
    sees the attempt): a session.rejected event, or a log line while the proxy starts
    and its audit spool is not open yet."""
    if audit is None:
        log.warning("unaudited refusal of %s@%s for %s", login, node, user)
        return
    await audit(
        "session.rejected", user=user, login=login, node=node, addr=addr, reason=reason,
        kind=kind, server="proxy",
    )  # fmt: skip


def set_session_cookie(response: web.StreamResponse, cookie: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, cookie, path="/", secure=True, httponly=True, samesite="Strict"
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


def login_token(request: web.Request) -> str:
    """The token for the login form: the one its cookie already holds, else a new one."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return token if len(token) == 43 else secrets.token_urlsafe(32)


def set_login_cookie(response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict"
    )


def check_login_csrf(request: web.Request, form_token: str) -> None:
    check_origin(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), form_token.encode()):
        raise AccessDenied("access denied: the form is stale or from another site; reload it")


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another site.

    Fetch metadata first: our Referrer-Policy (no-referrer, for invite tokens) makes
    Chromium send `Origin: null` even on our own forms, while `Sec-Fetch-Site` is always
    exact. Browsers without it fall back to Origin; a null origin is never ours."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser form (curl, tests of the API); tokens still apply
    return origin == f"https://{request.host}"


def check_origin(request: web.Request) -> None:
    if not same_origin(request):
        raise AccessDenied("access denied: cross-site request refused")


def current(request: web.Request) -> WebSession | None:
    sessions = request.app[SESSIONS_KEY]
    return sessions.find(request.cookies.get(SESSION_COOKIE, ""))


def check_csrf(request: web.Request, session: WebSession, form_token: str) -> None:
    check_origin(request)
    if not session.csrf_ok(form_token):
        raise AccessDenied("access denied: the form is stale or from another site; reload it")


async def signed_in(request: web.Request) -> WebSession | None:
    """The live session of this request with certificates fresh enough to use, or None."""
    session = current(request)
    if session is None:
        return None
    return await request.app[SESSIONS_KEY].fresh(session)
