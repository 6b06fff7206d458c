"""The web UI at /web: server-rendered pages over web sessions held by the proxy.

One module per page group (login_pages, invite_pages, nodes_page); guard.py holds the
security rules every page follows (cookie, CSRF, origin); sessions.py the session store.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from certgate.access.cached_access import CachedAccess
from certgate.api.lock import lock_message
from certgate.proxy.webui import (
    access_page,
    guard,
    locks_page,
    login_pages,
    recordings_pages,
    requests_pages,
    roles_page,
    sessions_page,
    users_page,
)
from certgate.proxy.webui.audit_page import audit_page
from certgate.proxy.webui.csp import install_player_policy
from certgate.proxy.webui.invite_pages import InvitePages
from certgate.proxy.webui.nodes_page import nodes_page
from certgate.proxy.webui.render import ACCESS_KEY, CLUSTER_KEY, page, redirect
from certgate.proxy.webui.sessions import WebSession, WebSessions
from certgate.proxy.webui.terminal import terminal_page, terminal_socket
from certgate.proxy.webui.vendor import vendor_file
from certgate.rpc.auth_client import AsyncAuthClient


def register(
    app: web.Application,
    auth: AsyncAuthClient,
    sessions: WebSessions,
    cluster_name: str,
    access: Callable[[], CachedAccess | None],
    *,
    real_certificate: bool,
    jump: Callable[[], tuple[str, int] | None] = lambda: None,
    audit: guard.AuditGetter = lambda: None,
) -> None:
    """`jump()`: where this proxy's SSH listener answers locally, once it does (the web
    terminal reaches agentless nodes through it)."""
    app[guard.SESSIONS_KEY] = sessions
    app[guard.AUTH_KEY] = auth
    app[CLUSTER_KEY] = cluster_name
    app[ACCESS_KEY] = access
    app[guard.AUDIT_KEY] = audit
    install_player_policy(app)
    invites = InvitePages(real_certificate)
    r = app.router
    r.add_get("/web", _home)
    r.add_get("/web/", _home)
    r.add_get("/web/login", login_pages.login_page)
    r.add_post("/web/login", login_pages.login_form)
    r.add_post("/web/logout", login_pages.logout)
    r.add_get("/web/nodes", nodes_page(access))
    r.add_get("/web/terminal", terminal_page)
    r.add_get("/web/terminal/ws", terminal_socket(access, jump))
    r.add_get("/web/recordings", recordings_pages.list_page)
    r.add_get("/web/recordings/{id}", recordings_pages.player_page)
    r.add_get("/web/recordings/{id}/cast", recordings_pages.cast_file)
    r.add_get("/web/audit", audit_page)
    r.add_get("/web/users", users_page.users_page)
    r.add_post("/web/users", users_page.invite)
    r.add_post("/web/users/{name}/reset", users_page.reset)
    r.add_post("/web/users/{name}/remove", users_page.remove)
    r.add_get("/web/roles", roles_page.roles_page)
    r.add_get("/web/roles/{name}", roles_page.role_page)
    r.add_post("/web/roles/{name}", roles_page.save_role)
    r.add_get("/web/locks", locks_page.locks_page)
    r.add_post("/web/locks", locks_page.create)
    r.add_post("/web/locks/{name}/remove", locks_page.remove)
    r.add_get("/web/requests", requests_pages.list_page)
    r.add_post("/web/requests", requests_pages.create)
    r.add_get("/web/requests/{id}", requests_pages.review_page)
    r.add_post("/web/requests/{id}/review", requests_pages.review)
    r.add_get("/web/access", access_page.access_page)
    r.add_get("/web/sessions", sessions_page.sessions_page)
    r.add_get("/web/static/vendor/{name}", vendor_file)
    r.add_get("/web/invite/{token}", invites.show)
    r.add_post("/web/invite/{token}", invites.submit)


async def _home(request: web.Request) -> web.StreamResponse:
    return redirect(login_pages.HOME)


def end_locked(sessions: WebSessions, access: CachedAccess) -> int:
    """End the web sessions a lock now matches (and their terminals, via on_end)."""

    def reason(session: WebSession) -> str | None:
        lock = access.lock_for(session.identity)
        return None if lock is None else lock_message(lock)

    return sessions.end_where(reason)


async def not_found_page(request: web.Request) -> web.Response:
    """What a person's mistyped or stale /web link gets: a page with the way back, not
    aiohttp's bare "404: Not Found"."""
    session = await guard.signed_in(request)
    return page(request, "not_found.html", session=session, status=404, path=request.path)
