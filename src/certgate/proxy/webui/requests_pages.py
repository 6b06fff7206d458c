"""/web/requests: access requests — create one with a reason, list them, and the review
page chat messages link to (`/web/requests/<id>`): who asked for what, why, for how
long, the thresholds and the reviews so far.

Approving or denying is a step-up: the reviewer enters a fresh one-time code, which
auth checks for the session's own user (`POST /v1/mfa/verify`: single-use, the login
lockout, audited as `user.mfa.verify`), so a stolen browser session alone cannot grant
access.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.forms import form_post
from certgate.proxy.webui.render import page, redirect, to_login
from certgate.proxy.webui.sessions import WebSession


async def list_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    return await _list(request, session, "", 200)


async def _list(request: web.Request, session: WebSession, error: str, status: int) -> web.Response:
    auth = request.app[guard.AUTH_KEY]
    headers = session.forwarded_headers()
    requests = await auth.call("GET", "/v1/access_requests", headers=headers)
    requestable = await auth.call("GET", "/v1/my/requestable", headers=headers)
    requests.sort(key=lambda r: r["spec"]["created"], reverse=True)
    return page(
        request,
        "requests.html",
        session=session,
        requests=requests,
        requestable=requestable.get("roles", []),
        asked=asked,
        error=error,
        status=status,
    )


@form_post
async def create(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    roles = [r.strip() for r in form.get("roles", "").split(",") if r.strip()]
    try:
        created, status = await request.app[guard.AUTH_KEY].call_status(
            "POST",
            "/v1/access_requests",
            json={"roles": roles, "reason": form.get("reason", "")},
            headers=session.forwarded_headers(),
        )
    except CertgateError as exc:
        return await _list(request, session, exc.message, exc.http_status)
    # 200: the user's pending request for the same (a form sent twice): its page says so.
    same = "" if status == 201 else "?same=1"
    return redirect(f"/web/requests/{created['metadata']['name']}{same}")


async def review_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    same = request.query.get("same") == "1"
    done = "You already asked for this: this is your pending request for the same." if same else ""
    return await _review_page(request, session, "", done, 200)


async def _review_page(
    request: web.Request, session: WebSession, error: str, done: str, status: int
) -> web.Response:
    request_id = request.match_info["id"]
    try:
        found = await request.app[guard.AUTH_KEY].call(
            "GET", f"/v1/access_requests/{_safe(request_id)}", headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        return page(
            request, "request.html", session=session, req=None, error=exc.message, done="",
            status=exc.http_status,
        )  # fmt: skip
    return page(
        request, "request.html", session=session, req=found, asked=asked, error=error,
        done=done, status=status,
    )  # fmt: skip


@form_post
async def review(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    verdict = form.get("verdict", "")
    auth = request.app[guard.AUTH_KEY]
    try:
        # The step-up: a fresh code of this very user (auth takes the name from the
        # session's certificate), before the review is sent.
        await auth.call(
            "POST",
            "/v1/mfa/verify",
            json={"otp": form.get("otp", "")},
            headers=session.forwarded_headers(),
        )
        await auth.call(
            "POST",
            f"/v1/access_requests/{_safe(request.match_info['id'])}/reviews",
            json={"verdict": verdict, "reason": form.get("reason", "")},
            headers=session.forwarded_headers(),
        )
    except CertgateError as exc:
        return await _review_page(request, session, exc.message, "", exc.http_status)
    done = "approved" if verdict == "approve" else "denied"
    return await _review_page(request, session, "", f"you {done} this request", 200)


def asked(access_request: dict[str, Any]) -> str:
    """What a request asks for, as a reviewer must read it: its resources (node/db-1)
    when it names any (its roles are then only what they are reached as), else its
    roles. The same words as cgsh and the chat messages."""
    spec = access_request["spec"]
    resources = [f"{r['kind']}/{r['name']}" for r in spec.get("resources") or []]
    return ", ".join(resources or spec.get("roles") or [])


def _safe(request_id: str) -> str:
    if not request_id or len(request_id) > 64 or not request_id.replace("-", "").isalnum():
        raise web.HTTPNotFound(text="no such request")
    return request_id
