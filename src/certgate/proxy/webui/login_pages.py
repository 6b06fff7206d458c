"""/web/login and /web/logout: a browser login makes a web session (sessions.py)."""

from __future__ import annotations

from aiohttp import web

from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.forms import read_form
from certgate.proxy.webui.render import page, redirect, safe_next

HOME = "/web/nodes"


def _login_page(
    request: web.Request, error: str = "", user: str = "", status: int = 200, after: str = ""
) -> web.Response:
    token = guard.login_token(request)
    response = page(
        request,
        "login.html",
        form_csrf=token,
        error=error,
        username=user,
        next=safe_next(after or request.query.get("next", "")),
        status=status,
    )
    guard.set_login_cookie(response, token)
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if guard.current(request) is not None:
        return redirect(safe_next(request.query.get("next", "")))
    return _login_page(request)


async def login_form(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    guard.check_login_csrf(request, form.get("csrf", ""))
    user = form.get("user", "")
    sessions = request.app[guard.SESSIONS_KEY]
    try:
        cookie, _ = await sessions.log_in(
            user, form.get("password", ""), form.get("otp", ""), request.remote or ""
        )
    except CertgateError as exc:
        return _login_page(request, exc.message, user, exc.http_status, form.get("next", ""))
    response = redirect(safe_next(form.get("next", "")))
    guard.set_session_cookie(response, cookie)
    response.del_cookie(guard.LOGIN_CSRF_COOKIE, path="/", secure=True, httponly=True)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    guard.check_origin(request)  # even without a session: no cross-site cookie clearing
    session = guard.current(request)
    form = await read_form(request)
    if session is not None:
        guard.check_csrf(request, session, form.get("csrf", ""))
        request.app[guard.SESSIONS_KEY].end(session, "logged out")
    response = redirect("/web/login")
    guard.clear_session_cookie(response)
    return response
