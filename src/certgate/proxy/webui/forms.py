"""Reading the pages' forms: url-encoded text only, small, valid, arriving in time; and
`form_post`, the one way a signed-in page takes a POST (session, form, CSRF, origin)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import web

from certgate.api.json_input import BODY_TIMEOUT
from certgate.errors import BadParameter
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import to_login
from certgate.proxy.webui.sessions import WebSession

FormHandler = Callable[[web.Request, WebSession, dict[str, str]], Awaitable[web.StreamResponse]]

# Our forms have a few short fields; anything bigger is not from our pages.
MAX_FORM_BYTES = 16 * 1024


async def read_form(request: web.Request) -> dict[str, str]:
    """aiohttp's own parser raises ValueError/AssertionError on a malformed multipart
    body and LookupError on an unknown charset; our pages never send either."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadParameter("the form must be sent as application/x-www-form-urlencoded")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise BadParameter("the form is too large")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.content.read(MAX_FORM_BYTES + 1)
    except TimeoutError as exc:
        raise BadParameter("the form did not arrive in time") from exc
    if len(raw) > MAX_FORM_BYTES:
        raise BadParameter("the form is too large")
    try:
        text = raw.decode("ascii")  # url-encoded forms are ASCII on the wire
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadParameter("the form could not be read") from exc
    return {key: value for key, value in pairs}


def form_post(handler: FormHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A POST route of a signed-in page: without a live session, the login page; else
    the form is read and its CSRF token and origin checked before `handler` sees it."""

    async def handle(request: web.Request) -> web.StreamResponse:
        session = await guard.signed_in(request)
        if session is None:
            return to_login(request)
        form = await read_form(request)
        guard.check_csrf(request, session, form.get("csrf", ""))
        return await handler(request, session, form)

    return handle
