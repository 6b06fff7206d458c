"""Auth API routes for who has access to what, and recent activity.

    GET /v1/access    ?user=U&node=N&kube_cluster=K&kind=node|kube_cluster&role=R
                      &label=k=v (label repeatable) &limit=N&start_key=KEY: the access
                      matrix rows (access/matrix.py), {"rows": [...], "next_key": KEY|""}:
                      a page of `limit` rows (DEFAULT_PAGE when not given, at most
                      MAX_PAGE), and `next_key` (opaque) is the `start_key` of the next
                      page ("" after the last)
    GET /v1/activity  ?days=7: counts per day of sessions started, logins, login
                      refusals and session refusals, {"days": [...], "series": {...}}

Both need verb `list` on resource `access` (the `auditor` and `editor` presets have it):
the answer tells who may reach which node as whom, which is itself worth protecting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.access.matrix import decode_key, encode_key
from certgate.api.identity import Identity
from certgate.auth.access_map import AccessFilter, AccessMap, RowKind
from certgate.auth.http_body import query_int
from certgate.errors import BadParameter

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

ACCESS = "access"  # the role rule resource
# Every answer is a page: the whole matrix of 100 users by 1,000 nodes took auth tens of
# seconds to build and send, and anyone with `list` on `access` could ask for it.
DEFAULT_PAGE = 1_000
MAX_PAGE = 10_000
_KINDS: dict[str, RowKind] = {"": "", "node": "node", "kube_cluster": "kube_cluster"}


def add_access_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    routes = AccessRoutes(AccessMap(api.server))
    add = api._handler
    router.add_get("/v1/access", add(ACCESS, "list", routes.list))
    router.add_get("/v1/activity", add(ACCESS, "list", routes.activity))


class AccessRoutes:
    def __init__(self, access_map: AccessMap) -> None:
        self._map = access_map

    async def list(self, request: web.Request, caller: Identity | None) -> Any:
        q = request.query
        kind = _KINDS.get(q.get("kind", ""))
        if kind is None:
            raise BadParameter("kind must be node or kube_cluster")
        wanted = AccessFilter(
            user=q.get("user", ""),
            node=q.get("node", ""),
            kube_cluster=q.get("kube_cluster", ""),
            kind=kind,
            role=q.get("role", ""),
            labels=AccessFilter.parse_labels(q.getall("label", [])),
        )
        limit = query_int(request, "limit", DEFAULT_PAGE, MAX_PAGE)
        start = q.get("start_key", "")
        after = decode_key(start) if start else None
        rows, last = await self._map.rows(wanted, limit, after)
        return {
            "rows": [row.to_dict() for row in rows],
            "next_key": encode_key(last) if last is not None else "",
        }

    async def activity(self, request: web.Request, caller: Identity | None) -> Any:
        return await self._map.activity(query_int(request, "days", 7, 90))
