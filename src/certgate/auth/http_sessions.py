"""Auth API routes for live session trackers (`cgsh sessions ls`, `cgsh join`).

    PUT    /v1/sessions/{id}    a node (or the proxy, for agentless nodes) registers or
                                refreshes a tracker: {"tracker": {...}, "ttl_seconds": N}
    DELETE /v1/sessions/{id}    ... and removes it when the session ends
    GET    /v1/sessions[?node=] the live sessions the caller may see, newest first
    GET    /v1/sessions/{id}    one of them

Each answer is a flat object: the tracker's fields plus `join_modes`, how the caller may
join it (`cgsh join` reads it to refuse with a reason before dialling the node, which
decides again on its own).

Who sees a session: its owner (who may also join it as a peer, from another terminal);
anyone whose roles' `join_sessions` let them join it; anyone whose roles allow `list`
on `session` (auditors); proxies and the admin identity. Others get the same answer as
for a session that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from certgate.api.codec import describe_validation_error
from certgate.api.identity import SYSTEM_ADMIN, SYSTEM_PROXY, Identity
from certgate.api.recording import is_recording_id
from certgate.api.session_tracker import JOIN_MODES, SessionTracker
from certgate.auth import permissions as perm
from certgate.auth.http_body import json_body
from certgate.errors import AccessDenied, BadParameter, NotFound
from certgate.services.store import ResourceStore

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

SESSION = "session"  # the role rule resource
MAX_TTL_SECONDS = 600


def add_session_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    routes = SessionRoutes(api)
    add = api._handler
    router.add_put("/v1/sessions/{id}", add(perm.SESSION_WRITE, "update", routes.put))
    router.add_delete("/v1/sessions/{id}", add(perm.SESSION_WRITE, "delete", routes.delete))
    # Users (their own, and what their roles show) and proxies (join-only dials): the
    # check depends on the kind of caller, so it is made first thing in the handler.
    router.add_get("/v1/sessions", add(None, "", routes.list))
    router.add_get("/v1/sessions/{id}", add(None, "", routes.get))


def not_found(session_id: str) -> NotFound:
    return NotFound(f'session "{session_id}" not found: it has ended, or you cannot see it')


class SessionRoutes:
    def __init__(self, api: AuthAPI) -> None:
        self._api = api

    @property
    def _store(self) -> ResourceStore[SessionTracker]:
        return self._api.server.session_trackers

    # ---- writers (nodes and proxies) ------------------------------------------------

    async def _check_writer(self, caller: Identity, node: str) -> None:
        """A node speaks for its own sessions; a proxy for those of agentless nodes."""
        if SYSTEM_ADMIN in caller.roles or node == caller.username:
            return
        if SYSTEM_PROXY in caller.roles and await self._api.server.is_agentless(node):
            return
        raise AccessDenied(
            f'access denied: {caller.username} may not track sessions of node "{node}"'
        )

    async def put(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        session_id = _session_id(request)
        body = await json_body(request)
        try:
            tracker = SessionTracker.model_validate(body.get("tracker"))
        except ValidationError as exc:
            raise BadParameter(describe_validation_error("session", session_id, exc)) from exc
        if tracker.name != session_id:
            raise BadParameter(f"tracker {tracker.name} sent to session {session_id}")
        seconds = body.get("ttl_seconds", 60)
        if not isinstance(seconds, int | float) or not 0 < seconds <= MAX_TTL_SECONDS:
            raise BadParameter(f"ttl_seconds must be a number of seconds up to {MAX_TTL_SECONDS}")
        await self._check_writer(caller, tracker.spec.node)
        try:
            existing = await self._store.get(session_id)
        except NotFound:
            pass
        else:
            # A retry or a refresh, never another node's session.
            if existing.spec.node != tracker.spec.node:
                raise AccessDenied(f"access denied: session {session_id} is on another node")
        expires = self._api.server.clock.now() + timedelta(seconds=seconds)
        meta = tracker.metadata.model_copy(update={"expires": expires, "revision": 0})
        await self._store.upsert(tracker.model_copy(update={"metadata": meta}))
        return None

    async def delete(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        session_id = _session_id(request)
        try:
            existing = await self._store.get(session_id)
        except NotFound:
            return None  # already gone (expired, or a retried delete)
        await self._check_writer(caller, existing.spec.node)
        try:
            await self._store.delete(session_id)
        except NotFound:
            pass
        return None

    # ---- readers --------------------------------------------------------------------

    async def _visible(self, caller: Identity, trackers: list[SessionTracker]) -> list[Any]:
        """The trackers `caller` may see, as answers with the caller's join modes."""
        now = self._api.server.clock.now()
        live = [t for t in trackers if t.metadata.expires is None or t.metadata.expires > now]
        if caller.kind == "service":
            if SYSTEM_ADMIN in caller.roles or SYSTEM_PROXY in caller.roles:
                return [_answer(t, []) for t in live]
            return []
        role_set = await self._api.authorizer.role_set(caller)
        sees_all = role_set.allows_rule(SESSION, "list")
        answers = []
        for tracker in live:
            if tracker.spec.user == caller.username:
                modes = list(JOIN_MODES)
            else:
                modes = [
                    mode
                    for mode in role_set.join_modes(tracker.spec.roles, tracker.spec.kind)
                    if mode in JOIN_MODES
                ]
            if modes or sees_all:
                answers.append(_answer(tracker, modes))
        return answers

    async def _check_reader(self, caller: Identity | None) -> Identity:
        if caller is not None and caller.kind == "service":
            return await self._api.authorizer.check(caller, SESSION, "list")
        return await self._api.authorizer.check(caller, perm.SELF, "read")

    async def list(self, request: web.Request, caller: Identity | None) -> Any:
        caller = await self._check_reader(caller)
        node = request.query.get("node") or None
        trackers = [t for t in await self._store.list() if node in (None, t.spec.node)]
        answers = await self._visible(caller, trackers)
        return sorted(answers, key=lambda a: a["started"], reverse=True)

    async def get(self, request: web.Request, caller: Identity | None) -> Any:
        caller = await self._check_reader(caller)
        session_id = request.match_info["id"]
        if not is_recording_id(session_id):
            raise not_found(session_id)
        try:
            tracker = await self._store.get(session_id)
        except NotFound:
            raise not_found(session_id) from None
        answers = await self._visible(caller, [tracker])
        if not answers:
            raise not_found(session_id)
        return answers[0]


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["id"]
    if not is_recording_id(session_id):
        raise BadParameter(f'invalid session id "{session_id}": session ids are UUIDs')
    return session_id


def _answer(tracker: SessionTracker, join_modes: Sequence[str]) -> dict[str, Any]:
    spec = tracker.spec
    return {
        "id": tracker.name,
        "kind": spec.kind,
        "session_kind": spec.session_kind,
        "user": spec.user,
        "login": spec.login,
        "node": spec.node,
        "roles": list(spec.roles),
        "command": spec.command,
        "started": spec.started.isoformat(),
        "participants": [p.model_dump(mode="json") for p in spec.participants],
        "join_modes": list(join_modes),
    }
