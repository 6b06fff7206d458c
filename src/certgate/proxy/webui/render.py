"""Server-rendered pages: Jinja2 templates from certgate/web/templates, autoescaped."""

from __future__ import annotations

import math
import posixpath
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import jinja2
from aiohttp import web

from certgate.access.cached_access import CachedAccess
from certgate.errors import AccessDenied
from certgate.proxy.webui.sessions import WebSession

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("certgate.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def minutes_seconds(seconds: Any) -> str:
    """`m:ss` for a duration; `?` for anything but a finite number of seconds (auth
    stored NaN and Infinity before it refused them: one must not break a whole list)."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "?"
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


_ENV.filters["minutes_seconds"] = minutes_seconds


def page(
    request: web.Request,
    template: str,
    *,
    session: WebSession | None = None,
    status: int = 200,
    **context: Any,
) -> web.Response:
    cluster = request.app.get(CLUSTER_KEY, "")
    text = _ENV.get_template(template).render(
        cluster=cluster,
        session=session,
        can=_permissions(request, session),
        user=session.user if session else "",
        csrf=session.csrf if session else "",
        **context,
    )
    return web.Response(text=text, content_type="text/html", status=status)


CLUSTER_KEY = web.AppKey("cluster_name", str)
AccessGetter = Callable[[], CachedAccess | None]
ACCESS_KEY: web.AppKey[AccessGetter] = web.AppKey("web_access")


def _permissions(request: web.Request, session: WebSession | None) -> Callable[[str, str], bool]:
    """`can(resource, verb)` for templates: which admin pages to show. Only what the
    menu shows; every page and auth check again on their own."""
    checker = request.app[ACCESS_KEY]() if ACCESS_KEY in request.app else None

    def can(resource: str, verb: str) -> bool:
        if session is None or checker is None:
            return False
        try:
            return bool(checker.role_set(session.identity).allows_rule(resource, verb))
        except AccessDenied:
            return False

    return can


def redirect(location: str) -> web.Response:
    """303: after a form, the browser GETs the next page (no resubmission on reload)."""
    return web.Response(status=303, headers={"Location": location})


def to_login(request: web.Request) -> web.Response:
    """To the login page, coming back here after it (the review link in a chat message)."""
    if request.method != "GET":
        return redirect("/web/login")  # a form's target is no page to come back to
    return redirect(f"/web/login?{urlencode({'next': request.path_qs})}")


def safe_next(value: str) -> str:
    """Only our own pages: never another host (`//evil`, `/\\evil`) or a scheme, and
    never a terminal: a link must not open a shell, or a join of someone's session, in
    the user's name the moment they log in (a terminal opens from a click on the
    resources or sessions page)."""
    # As the browser and the router will read it: /web/./terminal, /web/%74erminal.
    path = posixpath.normpath(unquote(urlsplit(value).path))
    if path == "/web/terminal" or path.startswith("/web/terminal/"):
        return "/web/nodes"
    if value.startswith("/web/") and not value.startswith("/web//") and "\\" not in value:
        return value
    return "/web/nodes"
