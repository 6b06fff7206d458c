"""/web/recordings: the user's recordings (all of them for roles that may list sessions),
with filters; a player page (asciinema-player: speed and seek); the .cast download.

Auth decides what the user may see: every call carries the web session's certificate,
as `cgsh recordings ls` and `cgsh play` do. A recording streams through a chunk at a
time, never held whole in the proxy.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import page, to_login

PAGE_LIMIT = 200
WRITE_TIMEOUT = 30.0
_SINCE = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "": None}
_ID = re.compile(r"[0-9a-f-]{36}")


async def list_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    user = request.query.get("user", "").strip()
    node = request.query.get("node", "").strip()
    since = request.query.get("since", "24h")
    if since not in _SINCE:
        since = "24h"
    params: dict[str, Any] = {"limit": str(PAGE_LIMIT)}
    if user:
        params["user"] = user
    if node:
        params["node"] = node
    span = _SINCE[since]
    if span is not None:
        params["since"] = (datetime.now(UTC) - span).isoformat()
    error = ""
    recordings: list[dict[str, Any]] = []
    try:
        recordings = await request.app[guard.AUTH_KEY].call(
            "GET", "/v1/recordings", params=params, headers=session.forwarded_headers()
        )
    except CertgateError as exc:
        error = exc.message
    recordings.sort(key=lambda r: r["start"], reverse=True)
    return page(
        request,
        "recordings.html",
        session=session,
        recordings=recordings,
        user_filter=user,
        node_filter=node,
        since=since,
        error=error,
    )


async def player_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    recording_id = _checked(request)
    info = await request.app[guard.AUTH_KEY].call(
        "GET", f"/v1/recordings/{recording_id}", headers=session.forwarded_headers()
    )
    return page(request, "player.html", session=session, rec=info)


async def cast_file(request: web.Request) -> web.StreamResponse:
    """The .cast itself: for the player, or as a download with ?download=1."""
    session = await guard.signed_in(request)
    if session is None:
        raise web.HTTPUnauthorized(text="log in first")
    recording_id = _checked(request)
    response = web.StreamResponse()
    async with request.app[guard.AUTH_KEY].raw_stream(
        "GET", f"/v1/recordings/{recording_id}/cast", headers=session.forwarded_headers()
    ) as answer:
        if answer.status_code != 200:
            await answer.aread()
            raise web.HTTPNotFound(text=f"recording {recording_id} cannot be read")
        response.headers["Content-Type"] = "application/x-asciicast; charset=utf-8"
        if request.query.get("download"):
            response.headers["Content-Disposition"] = f'attachment; filename="{recording_id}.cast"'
        await response.prepare(request)
        async for chunk in answer.aiter_bytes():
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.write(chunk)
    await response.write_eof()
    return response


def _checked(request: web.Request) -> str:
    recording_id = request.match_info["id"]
    if not _ID.fullmatch(recording_id):
        raise web.HTTPNotFound(text="recording ids are session UUIDs")
    return recording_id
