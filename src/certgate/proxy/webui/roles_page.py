"""/web/roles: the roles, and each one's YAML to view and edit; a document that does not
validate comes back in place with the reason (the same checks as `cgctl create -f`).
Auth checks the `role` rules on every call."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from certgate.api.codec import dump, parse_documents, to_dict
from certgate.api.role import Role
from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.forms import form_post
from certgate.proxy.webui.render import page, redirect, to_login
from certgate.proxy.webui.sessions import WebSession


async def roles_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    roles: list[dict[str, Any]] = []
    error, status = "", 200
    try:
        roles = await request.app[guard.AUTH_KEY].call(
            "GET", "/v1/resources/role", headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        error, status = exc.message, exc.http_status
    names = sorted(str(r["metadata"]["name"]) for r in roles)
    return page(request, "roles.html", session=session, names=names, error=error, status=status)


async def role_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    name = _name(request)
    try:
        found = await request.app[guard.AUTH_KEY].call(
            "GET", f"/v1/resources/role/{name}", headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        return page(
            request, "role.html", session=session, name=name, text="", error=exc.message,
            saved=False, status=exc.http_status,
        )  # fmt: skip
    # Auth answers a list, as for `cgctl get role/NAME`.
    document = found[0] if isinstance(found, list) and found else found
    text = dump([Role.model_validate(document)], "yaml")
    saved = request.query.get("saved") == "1"
    return page(request, "role.html", session=session, name=name, text=text, error="", saved=saved)


@form_post
async def save_role(
    request: web.Request, session: WebSession, form: dict[str, str]
) -> web.StreamResponse:
    name = _name(request)
    text = form.get("yaml", "")
    try:
        documents = parse_documents(text)
        if len(documents) != 1 or not isinstance(documents[0], Role):
            raise ValueError("the text must be exactly one role")
        if documents[0].metadata.name != name:
            raise ValueError(f'the role is named "{documents[0].metadata.name}", not "{name}"')
        await request.app[guard.AUTH_KEY].call(
            "POST", "/v1/resources", json={"resource": to_dict(documents[0]), "upsert": True},
            headers=session.forwarded_headers(),
        )  # fmt: skip
    except (CertgateError, ValueError) as exc:
        message = exc.message if isinstance(exc, CertgateError) else str(exc)
        status = exc.http_status if isinstance(exc, CertgateError) else 400
        return page(
            request, "role.html", session=session, name=name, text=text, error=message,
            saved=False, status=status,
        )  # fmt: skip
    return redirect(f"/web/roles/{name}?saved=1")


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
        raise web.HTTPNotFound(text="no such role")
    return name
