"""/web/nodes: the nodes the user may reach, with labels, search, a label filter and a
connect menu per allowed login; paged, so 1,000 nodes answer as fast as ten."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from certgate.access.cached_access import CachedAccess
from certgate.api.node import Node
from certgate.errors import AccessDenied
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import page, to_login

PAGE_SIZE = 50


def nodes_page(access: Callable[[], CachedAccess | None]) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        session = guard.current(request)
        if session is None:
            return to_login(request)
        sessions = request.app[guard.SESSIONS_KEY]
        session = await sessions.fresh(session)
        # Auth decides what the user sees (the same answer as `cgsh ls`).
        answer = await request.app[guard.AUTH_KEY].call(
            "GET", "/v1/my/nodes", headers=session.forwarded_headers()
        )
        # Filtered and sorted as plain dicts; only the page shown becomes models
        # (validating all of 1,000 nodes was most of this page's time).
        nodes: list[dict[str, Any]] = answer
        query = request.query.get("q", "").strip()
        label = request.query.get("label", "").strip()
        shown = [n for n in nodes if _matches(n, query, label)]
        shown.sort(key=lambda n: (n["spec"].get("hostname") or _name(n), _name(n)))
        pages = max(1, -(-len(shown) // PAGE_SIZE))
        try:
            number = min(max(1, int(request.query.get("page", "1"))), pages)
        except ValueError:
            number = 1
        visible = [
            Node.model_validate(n) for n in shown[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        ]
        checker = access()
        rows = [
            {
                "name": n.name,
                "hostname": n.spec.hostname or n.name,
                "addr": n.spec.addr,
                "labels": sorted(n.metadata.labels.items()),
                "logins": _logins(checker, session.identity, n),
            }
            for n in visible
        ]
        all_labels = sorted({f"{k}={v}" for n in nodes for k, v in _labels(n).items()})
        return page(
            request,
            "nodes.html",
            session=session,
            rows=rows,
            total=len(shown),
            query=query,
            label=label,
            all_labels=all_labels,
            page_number=number,
            pages=pages,
        )

    return handler


def _name(node: dict[str, Any]) -> str:
    return str(node["metadata"]["name"])


def _labels(node: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = node["metadata"].get("labels") or {}
    return labels


def _matches(node: dict[str, Any], query: str, label: str) -> bool:
    labels = _labels(node)
    if label:
        key, _, value = label.partition("=")
        if labels.get(key) != value:
            return False
    if not query:
        return True
    spec = node["spec"]
    words = [_name(node), str(spec.get("hostname", "")), str(spec.get("addr", ""))]
    words += [f"{k}={v}" for k, v in labels.items()]
    needle = query.lower()
    return any(needle in word.lower() for word in words)


def _logins(checker: CachedAccess | None, identity: Any, node: Node) -> list[str]:
    """The logins the user's roles allow on this node: one connect entry each."""
    if checker is None:
        return []
    allowed = []
    for login in identity.logins:
        try:
            checker.check_login(identity, node.name, node.metadata.labels, login)
        except AccessDenied:
            continue
        allowed.append(login)
    return allowed
