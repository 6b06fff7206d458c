"""/web/audit: the audit log, filtered by event, user, node and time, a page at a time
(auth's cursor: `next` carries on where this page ended). Auth checks `list` on `event`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import page, to_login

PAGE_SIZE = 50
_SINCE = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "": None}
# Fields every event has, shown in their own columns; the rest is the detail.
_COMMON = {"event", "code", "time", "user", "uid", "id"}


async def audit_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    q = request.query
    filters = {k: q.get(k, "").strip() for k in ("event", "user", "node")}
    since = q.get("since", "24h")
    if since not in _SINCE:
        since = "24h"
    params: dict[str, Any] = {"limit": str(PAGE_SIZE)}
    params.update({k: v for k, v in filters.items() if v})
    span = _SINCE[since]
    if span is not None:
        params["since"] = (datetime.now(UTC) - span).isoformat()
    cursor = q.get("cursor", "")
    if cursor:
        params["cursor"] = cursor
    events: list[dict[str, Any]] = []
    next_cursor = ""
    error = ""
    status = 200
    try:
        answer = await request.app[guard.AUTH_KEY].call(
            "GET", "/v1/events", params=params, headers=session.forwarded_headers()
        )
        events, next_cursor = answer["events"], answer.get("cursor") or ""
    except CertgateError as exc:
        error, status = exc.message, exc.http_status
    rows = [
        {
            "time": str(e.get("time", ""))[:19].replace("T", " "),
            "event": e.get("event", ""),
            "user": e.get("user", ""),
            "detail": json.dumps({k: v for k, v in e.items() if k not in _COMMON})[:300],
        }
        for e in events
    ]
    return page(
        request,
        "audit.html",
        session=session,
        rows=rows,
        filters=filters,
        since=since,
        next_cursor=next_cursor,
        error=error,
        # Refused: neither filters nor "No events match." (the log was not searched).
        refused=status == 403,
        status=status,
    )
