"""/web/locks: create, list and remove locks (as `cgctl lock` and `cgctl rm lock/NAME`).
Auth checks the `lock` rules on every call; the page shows its refusal in place."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from certgate.api.codec import to_dict
from certgate.api.duration import parse_duration
from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.forms import form_post
from certgate.proxy.webui.render import page, redirect, to_login
from certgate.proxy.webui.sessions import WebSession

TARGETS = ("user", "role", "login", "node", "access_request")


async def locks_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    return await _page(request, session, "", 200)


async def _page(request: web.Request, session: WebSession, error: str, status: int) -> web.Response:
    locks: list[dict[str, Any]] = []
    listed = True
    try:
        locks = await request.app[guard.AUTH_KEY].call(
            "GET", "/v1/resources/lock", headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        # No "No locks." under a refusal: the table would say something untrue.
        error, status, listed = error or exc.message, exc.http_status, False
    rows = []
    for lock in locks:
        target = {k: v for k, v in lock["spec"]["target"].items() if v and k != "issued_before"}
        rows.append(
            {
                "name": lock["metadata"]["name"],
                "target": ", ".join(f"{k}={v}" for k, v in target.items()),
                "message": lock["spec"].get("message", ""),
                "expires": (lock["metadata"].get("expires") or "never")[:19].replace("T", " "),
            }
        )
    return page(
        request, "locks.html", session=session, locks=rows, listed=listed, targets=TARGETS,
        error=error, status=status,
    )  # fmt: skip


@form_post
async def create(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    kind = form.get("target", "")
    try:
        if kind not in TARGETS:
            raise ValueError(f"lock a {', '.join(TARGETS)}")
        ttl = form.get("ttl", "").strip()
        until = datetime.now(UTC) + parse_duration(ttl) if ttl else None
        lock = Lock(
            metadata=Metadata(name=str(uuid.uuid4()), expires=until),
            spec=LockSpec(
                target=LockTarget.model_validate({kind: form.get("value", "").strip()}),
                message=form.get("message", ""),
                created=datetime.now(UTC),
            ),
        )
    except (ValidationError, ValueError, CertgateError) as exc:
        message = exc.message if isinstance(exc, CertgateError) else _first_error(exc)
        return await _page(request, session, f"invalid lock: {message}", 400)
    try:
        await request.app[guard.AUTH_KEY].call(
            "POST", "/v1/resources", json={"resource": to_dict(lock)},
            headers=session.forwarded_headers(),
        )  # fmt: skip
    except CertgateError as exc:
        return await _page(request, session, exc.message, exc.http_status)
    return redirect("/web/locks")


@form_post
async def remove(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    name = request.match_info["name"]
    if not name.replace("-", "").isalnum() or len(name) > 64:
        raise web.HTTPNotFound(text="no such lock")
    try:
        await request.app[guard.AUTH_KEY].call(
            "DELETE", f"/v1/resources/lock/{name}", headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        return await _page(request, session, exc.message, exc.http_status)
    return redirect("/web/locks")


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return str(exc)
