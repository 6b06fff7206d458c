"""/web/users: invite a user (roles, logins), reset one (a new invite link), remove one —
what `cgctl users add|reset|rm` do. Auth checks the `user` rules on every call.

The invite link is shown once, on the page that made it: it is the new user's secret."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.forms import form_post
from certgate.proxy.webui.render import page, redirect, to_login
from certgate.proxy.webui.sessions import WebSession


async def users_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    return await _page(request, session)


async def _page(
    request: web.Request, session: WebSession, error: str = "", link: str = "", status: int = 200
) -> web.Response:
    users: list[dict[str, Any]] = []
    listed = True
    try:
        users = await request.app[guard.AUTH_KEY].call(
            "GET", "/v1/resources/user", headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        error, status = error or exc.message, exc.http_status
        listed = False
    rows = [
        {
            "name": u["metadata"]["name"],
            "roles": ", ".join(u["spec"].get("roles", [])),
            "logins": ", ".join((u["spec"].get("traits") or {}).get("logins", [])),
        }
        for u in sorted(users, key=lambda u: str(u["metadata"]["name"]))
    ]
    return page(
        request, "users.html", session=session, users=rows, listed=listed, error=error,
        link=link, status=status,
    )  # fmt: skip


@form_post
async def invite(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    body = {
        "name": form.get("name", "").strip(),
        "roles": _words(form.get("roles", "")),
        "traits": {"logins": _words(form.get("logins", ""))},
    }
    return await _call(request, session, "POST", "/v1/users", body)


@form_post
async def reset(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    return await _call(request, session, "POST", f"/v1/users/{_name(request)}/reset", {})


@form_post
async def remove(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    try:
        await request.app[guard.AUTH_KEY].call(
            "DELETE", f"/v1/resources/user/{_name(request)}", headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        return await _page(request, session, exc.message, status=exc.http_status)
    return redirect("/web/users")


async def _call(
    request: web.Request, session: WebSession, method: str, path: str, body: dict[str, Any]
) -> web.Response:
    try:
        answer = await request.app[guard.AUTH_KEY].call(
            method, path, json=body, headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        return await _page(request, session, exc.message, status=exc.http_status)
    return await _page(request, session, link=str(answer["invite_url"]))


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.replace(" ", ",").split(",") if w.strip()]


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_.@" for c in name):
        raise web.HTTPNotFound(text="no such user")
    return name
