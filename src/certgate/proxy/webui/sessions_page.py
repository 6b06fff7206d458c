"""/web/sessions: the live terminal sessions the user may see (auth's `GET
/v1/sessions`, as `cgsh sessions ls`): theirs, those their roles let them join, or all
with a `list` rule on `session`. Auth decides what is in the answer."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from certgate.api.session_tracker import join_login
from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import page, to_login


async def sessions_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    found: list[dict[str, Any]] = []
    error, status = "", 200
    try:
        found = (
            await request.app[guard.AUTH_KEY].call(
                "GET", "/v1/sessions", headers=session.forwarded_headers()
            )
            or []
        )
    except CertgateError as exc:
        error, status = exc.message, exc.http_status
    rows = [
        {
            "id": str(s["id"]),
            "user": s["user"],
            "login": s["login"],
            "node": s["node"],
            "started": str(s["started"])[:19].replace("T", " "),
            "joined": ", ".join(f"{p['user']} ({p['mode']})" for p in s.get("participants", [])),
            "join_modes": ", ".join(s.get("join_modes", [])),
            "watch": _join_link(s, "observer"),
            "join": _join_link(s, "peer"),
        }
        for s in found
    ]
    return page(request, "sessions.html", session=session, rows=rows, error=error, status=status)


def _join_link(tracker: dict[str, Any], mode: str) -> str:
    """The web terminal joins as `cgsh join --mode=MODE` does, by the login it dials (the
    node, or the proxy for an agentless node, reads it and decides again); offered only
    where auth says the caller's roles allow that mode: Watch for observer (read-only),
    Join for peer (typing into the shared terminal). A Kubernetes exec session is watched
    through the proxy itself (auth never offers peer for one)."""
    if mode not in tracker.get("join_modes", []):
        return ""
    login = join_login(mode, str(tracker["id"]))
    return f"/web/terminal?{urlencode({'node': tracker['node'], 'login': login})}"
