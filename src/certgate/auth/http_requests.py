"""Auth API routes for access requests (`cgsh request`, `cgctl requests`).

    POST /v1/access_requests                 create {roles|resources, reason, reviewers,
                                             max_duration, request_ttl}: 201; 200 and
                                             the caller's pending request for the same
    GET  /v1/access_requests                 ?limit=N: own requests and those the caller
                                             may review, the newest N (DEFAULT_LIST when
                                             not given, at most MAX_LIST)
    GET  /v1/access_requests/{id}            one (id or unique prefix)
    GET  /v1/access_requests/{id}/wait       ?after=REVISION: the request once it changed
                                             (or as it is after a few seconds)
    POST /v1/access_requests/{id}/reviews    {verdict: approve|deny, reason}
    GET  /v1/access_search                   ?kind=node&label=k=v: what search_as_roles reach
    GET  /v1/my/requestable                  what the caller may request, and on what terms
    GET  /v1/access_suggest                  ?node=N&login=L: requestable roles (or a
                                             resource request) that would allow it

Every authenticated user may call them (SELF); what each answer holds is decided by
the user's roles as stored now (auth/access_requests.py, access/requests.py). Callers
whose role rules allow `list` on `access_request` (plugins, auditors) see every request.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.api.codec import to_dict
from certgate.api.duration import parse_duration
from certgate.api.identity import SYSTEM_ADMIN, Identity
from certgate.auth import permissions as perm
from certgate.auth.http_body import json_body, query_int, str_list
from certgate.errors import AccessDenied, BadParameter

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

KIND = "access_request"
# Any user may create requests (each lives up to a week), and a reviewer's list holds
# everyone's: the answer is capped, newest first, so it never grows with them.
DEFAULT_LIST = 1_000
MAX_LIST = 10_000


def add_request_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    routes = RequestRoutes(api)
    add = api._handler
    router.add_post("/v1/access_requests", add(perm.SELF, "update", routes.create))
    router.add_get("/v1/access_requests", add(perm.SELF, "read", routes.list))
    router.add_get("/v1/access_requests/{id}", add(perm.SELF, "read", routes.get))
    router.add_get("/v1/access_requests/{id}/wait", add(perm.SELF, "read", routes.wait))
    router.add_post("/v1/access_requests/{id}/reviews", add(perm.SELF, "update", routes.review))
    router.add_get("/v1/access_search", add(perm.SELF, "read", routes.search))
    router.add_get("/v1/my/requestable", add(perm.SELF, "read", routes.requestable))
    router.add_get("/v1/access_suggest", add(perm.SELF, "read", routes.suggest))


def _optional_duration(body: dict[str, Any], key: str) -> timedelta | None:
    value = body.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadParameter(f'"{key}" must be a duration like 30m or 8h')
    duration = parse_duration(value)
    if duration <= timedelta(0):
        raise BadParameter(f'"{key}" must be longer than 0s')
    return duration


class RequestRoutes:
    def __init__(self, api: AuthAPI) -> None:
        self._api = api

    async def _read_all(self, caller: Identity) -> bool:
        """Whether the caller sees every request: the admin identity, or roles whose
        rules allow listing access_request."""
        if caller.is_service(SYSTEM_ADMIN):
            return True
        if caller.kind != "user":
            return False
        try:
            role_set = await self._api.authorizer.role_set(caller)
        except AccessDenied:
            return False
        return role_set.allows_rule(KIND, "list")

    async def create(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise BadParameter('"reason" must be a string')
        created, new = await self._api.server.create_request(
            caller,
            roles=str_list(body, "roles"),
            resources=str_list(body, "resources"),
            reason=reason,
            reviewers=str_list(body, "reviewers"),
            max_duration=_optional_duration(body, "max_duration"),
            pending_ttl=_optional_duration(body, "request_ttl"),
        )
        # 200, not 201: the caller's earlier request for the same thing, still pending.
        return web.json_response(to_dict(created), status=201 if new else 200)

    async def list(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        limit = query_int(request, "limit", DEFAULT_LIST, MAX_LIST)
        found = await self._api.server.list_requests(caller, await self._read_all(caller))
        return [to_dict(r) for r in found[:limit]]

    async def get(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        found = await self._api.server.get_request(
            caller, request.match_info["id"], await self._read_all(caller)
        )
        return to_dict(found)

    async def wait(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        try:
            after = int(request.query.get("after", "0"))
            seconds = float(request.query.get("timeout", "10"))
        except ValueError as exc:
            raise BadParameter("after is a revision and timeout a number of seconds") from exc
        found = await self._api.server.wait_request(
            caller,
            request.match_info["id"],
            after,
            timedelta(seconds=max(0.0, seconds)),
            await self._read_all(caller),
        )
        return to_dict(found)

    async def review(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        verdict = body.get("verdict")
        reason = body.get("reason", "")
        if verdict not in ("approve", "deny") or not isinstance(reason, str):
            raise BadParameter('a review is {"verdict": "approve"|"deny", "reason": "..."}')
        saved = await self._api.server.review_request(
            caller, request.match_info["id"], verdict, reason
        )
        return to_dict(saved)

    async def search(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        labels: dict[str, str] = {}
        for pair in request.query.getall("label", []):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise BadParameter(f'"{pair}": filter with key=value')
            labels[key] = value
        found = await self._api.server.search_resources(
            caller, request.query.get("kind", "node"), labels
        )
        return [to_dict(n) for n in sorted(found, key=lambda n: n.name)]

    async def requestable(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        if caller.kind != "user":
            return {"roles": [], "search_as_roles": [], "request_access": "optional"}
        policy = await self._api.server.request_policy(caller)
        return {
            "roles": policy.requestable_roles(),
            "search_as_roles": policy.search_as_roles(),
            "request_access": policy.request_access,
            "request_prompt": policy.request_prompt,
        }

    async def suggest(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        node = request.query.get("node", "")
        login = request.query.get("login", "")
        if not node or not login:
            raise BadParameter("name the node and the login: ?node=web-1&login=ubuntu")
        return await self._api.server.suggest(caller, node, login)
