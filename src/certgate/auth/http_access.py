"""Auth API routes for who has access to what, and recent activity.

    GET /v1/access    ?user=U&node=N&role=R&label=k=v (label repeatable): the access
                      matrix rows (access/matrix.py), {"rows": [...]}
    GET /v1/activity  ?days=7: counts per day of sessions started, logins, login
                      refusals and session refusals, {"days": [...], "series": {...}}

Both need verb `list` on resource `access` (the `auditor` and `editor` presets have it):
the answer tells who may reach which node as whom, which is itself worth protecting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.api.identity import Identity
from certgate.auth.access_map import AccessFilter, AccessMap
from certgate.auth.http_body import query_int

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

ACCESS = "access"  # the role rule resource


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
        wanted = AccessFilter(
            user=q.get("user", ""),
            node=q.get("node", ""),
            role=q.get("role", ""),
            labels=AccessFilter.parse_labels(q.getall("label", [])),
        )
        rows = await self._map.rows(wanted)
        return {"rows": [row.to_dict() for row in rows]}

    async def activity(self, request: web.Request, caller: Identity | None) -> Any:
        return await self._map.activity(query_int(request, "days", 7, 90))
