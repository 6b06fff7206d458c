"""/web/terminal: xterm.js in the page, a WebSocket to the proxy, an SSH session onward.

The WebSocket is authenticated by the session cookie and its Origin must be this proxy
(a page of another site could otherwise open one with the user's cookie where SameSite
does not apply). Messages, browser -> proxy: text JSON
`{"type": "input", "data": "..."}`, `{"type": "resize", "cols": C, "rows": R}`,
`{"type": "ping"}`; proxy -> browser: binary frames of terminal output, and text JSON
`{"type": "closed", "message": "..."}` before the proxy closes the socket.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from certgate.access.cached_access import CachedAccess
from certgate.api.node import Node
from certgate.api.session_tracker import parse_join_login
from certgate.errors import AccessDenied, CertgateError, NotFound
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import page, to_login
from certgate.proxy.webui.sessions import WebSession
from certgate.proxy.webui.ssh_bridge import NodeShell

# A browser that stays silent this long (it pings every 20 s) is gone.
WS_HEARTBEAT = 30.0
MAX_MESSAGE = 64 * 1024


async def terminal_page(request: web.Request) -> web.StreamResponse:
    session = guard.current(request)
    if session is None:
        return to_login(request)
    node = request.query.get("node", "")
    login = request.query.get("login", "")
    return page(
        request, "terminal.html", session=session, node=node, login=login,
        heading=_heading(node, login),
    )  # fmt: skip


def _heading(node: str, login: str) -> str:
    """What the terminal's bar says: `alice@node-1`, or the session joined and how."""
    joined = parse_join_login(login)
    if joined is None:
        return f"{login}@{node}"
    mode, session_id = joined
    how = "watching" if mode == "observer" else "joined"
    return f"{how} session {session_id[:8]} on {node}" + (
        " (you can type)" if mode == "peer" else ""
    )


def terminal_socket(
    access: Callable[[], CachedAccess | None], jump: Callable[[], tuple[str, int] | None]
) -> Any:
    """The WebSocket handler; `jump()` is this proxy's SSH listener (agentless nodes are
    reached through it, as `cgsh ssh` reaches them: ssh_bridge.py)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Origin") != f"https://{request.host}":
            raise AccessDenied("access denied: cross-site WebSocket refused")
        session = guard.current(request)
        if session is None:
            raise AccessDenied("access denied: log in first")
        checker = access()
        if checker is None:
            raise AccessDenied("access denied: the proxy is starting; try again")
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)

        async def send_output(data: bytes) -> None:
            if not ws.closed:
                await ws.send_bytes(data)

        # Why the web session ended (logout, lock), when it did: shown instead of the
        # shell's own "the session ended".
        ended: list[str] = []

        async def finish(message: str) -> None:
            if not ws.closed:
                text = ended[0] if ended else message
                with contextlib.suppress(ConnectionError):
                    await ws.send_str(json.dumps({"type": "closed", "message": text}))
                await ws.close()

        def on_session_end(reason: str) -> None:
            # The web session ended: so does its terminal. Hanging up the SSH connection
            # ends the shell's pump, which closes the socket with `reason`.
            ended.append(reason)
            shell.hang_up()

        shell = NodeShell(send_output, finish)
        session.on_end.append(on_session_end)
        try:
            session = await request.app[guard.SESSIONS_KEY].fresh(session)
            login = request.query.get("login", "")
            try:
                node = await _target(request, checker, session, login)
            except (AccessDenied, NotFound) as exc:
                # Decided here, before any node is dialled: the node never sees the
                # attempt (a hidden node, a join refused), so this proxy writes it.
                await _audit_refusal(request, session, login, exc)
                raise
            cols, rows = _size(request.query.get("cols"), request.query.get("rows"))
            await shell.open(session, node, login, cols, rows, jump())
        except CertgateError as exc:
            await finish(exc.message)
            return ws
        sessions = request.app[guard.SESSIONS_KEY]
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                # Typing in the terminal is using the session: it does not idle out
                # under someone at work in a shell for half an hour. The page's own
                # pings are not: a tab left open must still idle out.
                if handle_message(shell, message.data):
                    sessions.touch(session)
        finally:
            if on_session_end in session.on_end:
                session.on_end.remove(on_session_end)
            await shell.close()
        return ws

    return handler


async def _target(
    request: web.Request, checker: CachedAccess, session: WebSession, login: str
) -> Node | None:
    """The node to dial: one the roles may reach, or for a join (`join:<mode>:<id>`) the
    node of a live session auth says this user may join in that mode, as the jump host
    lets `cgsh join` through (joining needs no access to the node's labels). The node,
    or the proxy for an agentless node, checks the join again when it is dialled.
    None for a Kubernetes exec session: it has no node, so the proxy's own SSH listener
    serves the view, as it does for `cgsh join` (proxy/kube_join.py)."""
    name = request.query.get("node", "")
    joined = parse_join_login(login)
    if joined is None:
        return checker.resolve_node(session.identity, name)
    mode, session_id = joined
    live = await request.app[guard.AUTH_KEY].call(
        "GET", "/v1/sessions", headers=session.forwarded_headers()
    )
    for tracker in live or []:
        if str(tracker.get("id")) == session_id and mode in tracker.get("join_modes", []):
            if tracker.get("kind") == "k8s":
                return None
            node = checker.find_node(str(tracker["node"]))
            checker.check_identity(session.identity, node=node.name)
            return node
    raise AccessDenied(f"access denied: you may not join session {session_id[:8]} as {mode}")


async def _audit_refusal(
    request: web.Request, session: WebSession, login: str, exc: CertgateError
) -> None:
    await guard.audit_rejected(
        request.app[guard.AUDIT_KEY](), user=session.user, login=login,
        node=request.query.get("node", ""), addr=session.client_addr, reason=exc.message,
        kind="web",
    )  # fmt: skip


class _Shell(Protocol):
    def write(self, data: bytes) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...


def handle_message(shell: _Shell, text: str) -> bool:
    """One message of the page to the shell; whether it was the user's keystrokes."""
    try:
        message = json.loads(text)
    except ValueError:
        return False
    if not isinstance(message, dict):
        return False
    kind = message.get("type")
    if kind == "input" and isinstance(message.get("data"), str):
        shell.write(message["data"].encode())
        return True
    if kind == "resize":
        cols, rows = _size(message.get("cols"), message.get("rows"))
        shell.resize(cols, rows)
    return False


def _size(cols: Any, rows: Any) -> tuple[int, int]:
    def clamp(value: Any, default: int) -> int:
        try:
            return min(max(int(value), 10), 500)
        except (TypeError, ValueError):
            return default

    return clamp(cols, 80), clamp(rows, 24)
