"""/web/nodes: the resources the user may reach — nodes, and Kubernetes clusters on a
second tab — with labels, search, a label filter (both apply to both tabs), a connect
menu per allowed login for nodes and the `cgsh kube login NAME` hint for clusters;
paged, so 1,000 nodes answer as fast as ten."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from certgate.access.cached_access import CachedAccess
from certgate.api.kube_cluster import KubeCluster
from certgate.api.node import Node
from certgate.errors import AccessDenied
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import page, to_login

PAGE_SIZE = 50
TABS = ("nodes", "kube")


def nodes_page(access: Callable[[], CachedAccess | None]) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        session = guard.current(request)
        if session is None:
            return to_login(request)
        sessions = request.app[guard.SESSIONS_KEY]
        session = await sessions.fresh(session)
        # Auth decides what the user sees (the same answers as `cgsh ls`, `cgsh kube ls`).
        auth, headers = request.app[guard.AUTH_KEY], session.forwarded_headers()
        nodes, clusters = await asyncio.gather(
            auth.call("GET", "/v1/my/nodes", headers=headers),
            auth.call("GET", "/v1/my/kube_clusters", headers=headers),
        )
        tab = request.query.get("tab", "nodes")
        tab = tab if tab in TABS else "nodes"
        query = request.query.get("q", "").strip()
        label = request.query.get("label", "").strip()
        # Filtered and sorted as plain dicts; only the page shown becomes models
        # (validating all of 1,000 nodes was most of this page's time).
        shown_nodes = [n for n in nodes if _matches(n, _node_words(n), query, label)]
        shown_nodes.sort(key=lambda n: (n["spec"].get("hostname") or _name(n), _name(n)))
        shown_clusters = [c for c in clusters if _matches(c, [_name(c)], query, label)]
        shown_clusters.sort(key=_name)
        shown = shown_nodes if tab == "nodes" else shown_clusters
        pages = max(1, -(-len(shown) // PAGE_SIZE))
        try:
            number = min(max(1, int(request.query.get("page", "1"))), pages)
        except ValueError:
            number = 1
        visible = shown[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        checker = access()
        if tab == "nodes":
            rows = [_node_row(checker, session.identity, Node.model_validate(n)) for n in visible]
        else:
            rows = [
                _cluster_row(checker, session.identity, KubeCluster.model_validate(c))
                for c in visible
            ]
        every = [*nodes, *clusters]
        all_labels = sorted({f"{k}={v}" for item in every for k, v in _labels(item).items()})
        return page(
            request,
            "nodes.html",
            session=session,
            tab=tab,
            rows=rows,
            node_count=len(shown_nodes),
            cluster_count=len(shown_clusters),
            query=query,
            label=label,
            all_labels=all_labels,
            page_number=number,
            pages=pages,
        )

    return handler


def _name(item: dict[str, Any]) -> str:
    return str(item["metadata"]["name"])


def _labels(item: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = item["metadata"].get("labels") or {}
    return labels


def _node_words(node: dict[str, Any]) -> list[str]:
    spec = node["spec"]
    return [_name(node), str(spec.get("hostname", "")), str(spec.get("addr", ""))]


def _matches(item: dict[str, Any], words: list[str], query: str, label: str) -> bool:
    labels = _labels(item)
    if label:
        key, _, value = label.partition("=")
        if labels.get(key) != value:
            return False
    if not query:
        return True
    needle = query.lower()
    return any(needle in word.lower() for word in [*words, *_label_texts(labels)])


def _label_texts(labels: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in labels.items()]


def _node_row(checker: CachedAccess | None, identity: Any, node: Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "hostname": node.spec.hostname or node.name,
        "addr": node.spec.addr,
        "labels": sorted(node.metadata.labels.items()),
        "logins": _logins(checker, identity, node),
    }


def _cluster_row(
    checker: CachedAccess | None, identity: Any, cluster: KubeCluster
) -> dict[str, Any]:
    groups: list[str] = []
    if checker is not None:
        try:
            groups = checker.role_set(identity).kubernetes_groups(cluster.metadata.labels)
        except AccessDenied:
            pass  # a role of the session is gone: auth listed it, the kube service decides
    return {
        "name": cluster.name,
        "labels": sorted(cluster.metadata.labels.items()),
        "groups": groups,
        "hint": f"cgsh kube login {cluster.name}",
    }


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
