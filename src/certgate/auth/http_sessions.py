"""Auth API routes for live session trackers (`cgsh sessions ls`, `cgsh join`).

    POST   /v1/sessions         a node (or the proxy, for agentless nodes) registers or
                                refreshes trackers and removes ended ones, in one call:
                                {"put": [tracker...], "delete": [id...], "ttl_seconds": N}
    GET    /v1/sessions[?node=] the live sessions the caller may see, newest first
    GET    /v1/sessions/{id}    one of them

Each answer is a flat object: the tracker's fields plus `join_modes`, how the caller may
join it (`cgsh join` reads it to refuse with a reason before dialling the node, which
decides again on its own).

Who writes a tracker: the host that runs the session, by the writer rule of
auth/session_hosts.py (a node for itself, a kube service for its clusters, a proxy for
agentless nodes); a tracker also claims its session for that host there.

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
from certgate.auth.session_hosts import TRACKER_TTL
from certgate.errors import AccessDenied, BadParameter, NotFound
from certgate.services.store import ResourceStore

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

SESSION = "session"  # the role rule resource
MAX_TTL_SECONDS = 600
MAX_BATCH = 1000


def add_session_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    routes = SessionRoutes(api)
    add = api._handler
    router.add_post("/v1/sessions", add(perm.SESSION_WRITE, "update", routes.write))
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

    def _check_roles(
        self,
        tracker: SessionTracker,
        standing: dict[str, set[str] | None],
        granted: dict[str, set[str]] | None,
    ) -> set[str]:
        """A tracker names roles its user holds: they decide who may join the session,
        so a writer must not hand a session roles that would widen that. `standing`: each
        user's own roles (None: no such user); `granted`: what approved access requests
        grant each user now, if read. The roles left to check against `granted` (when
        it was not read), else refused."""
        name = tracker.spec.user
        roles = standing.get(name)
        if roles is None:
            raise AccessDenied(
                f'access denied: session {tracker.name} names user "{name}", who does not exist'
            )
        extra = set(tracker.spec.roles) - roles
        if extra and granted is not None:
            # A session may run under roles an approved access request grants now.
            extra -= granted.get(name, set())
            if extra:
                raise AccessDenied(
                    f"access denied: session {tracker.name} names roles "
                    f'{", ".join(sorted(extra))} that user "{name}" does not hold'
                )
        return extra

    async def _granted_now(self) -> dict[str, set[str]]:
        """The roles each user's approved access requests grant at this moment."""
        now = self._api.server.clock.now()
        granted: dict[str, set[str]] = {}
        for found in await self._api.server.access_requests.list():
            if found.active_at(now):
                granted.setdefault(found.spec.user, set()).update(found.spec.roles)
        return granted

    async def write(self, request: web.Request, caller: Identity | None) -> Any:
        """Register or refresh the trackers in "put", remove those named in "delete".

        One call carries every change a service has queued (a burst of sessions
        starting and ending is a few calls, not two per session). Everything is
        checked before anything is written: one bad item refuses the whole call. One
        read (the trackers and their users; access requests only when a tracker names
        a role its user does not hold on its own) and one transaction per call.
        """
        assert caller is not None
        body = await json_body(request)
        seconds = body.get("ttl_seconds", 60)
        if not isinstance(seconds, int | float) or not 0 < seconds <= MAX_TTL_SECONDS:
            raise BadParameter(f"ttl_seconds must be a number of seconds up to {MAX_TTL_SECONDS}")
        trackers = [_tracker(item) for item in _items(body, "put")]
        deletes = [_session_id(item) for item in _items(body, "delete")]
        hosts = self._api.session_hosts
        for node in sorted({t.spec.node for t in trackers}):
            await hosts.check_writer(caller, node)
        server = self._api.server
        users = server.users.users
        names = [*(t.name for t in trackers), *deletes]
        user_names = sorted({t.spec.user for t in trackers})
        keys = [*(self._store.key(n) for n in names), *(users.key(u) for u in user_names)]
        items = {item.key: item for item in await server.backend.get_many(keys)}
        existing = {
            name: self._store.decode(items[key])
            for name in names
            if (key := self._store.key(name)) in items
        }
        standing: dict[str, set[str] | None] = {
            user: set(users.decode(items[key]).spec.roles) if key in items else None
            for user in user_names
            for key in [users.key(user)]
        }
        unsure = []
        for tracker in trackers:
            # A refresh, never another node's session.
            if tracker.name in existing and existing[tracker.name].spec.node != tracker.spec.node:
                raise AccessDenied(f"access denied: session {tracker.name} is on another node")
            if self._check_roles(tracker, standing, None):
                unsure.append(tracker)
        if unsure:
            granted = await self._granted_now()
            for tracker in unsure:
                self._check_roles(tracker, standing, granted)
        for name in deletes:
            if name in existing:
                await hosts.check_writer(caller, existing[name].spec.node)
        # From now on proxies see these ids: they are this host's sessions, whoever
        # announces them later (auth/session_hosts.py).
        await hosts.claim(
            caller, [(t.name, t.spec.node, t.spec.user) for t in trackers], TRACKER_TTL
        )
        expires = server.clock.now() + timedelta(seconds=seconds)
        puts = [
            self._store.encode(
                tracker.model_copy(
                    update={
                        "metadata": tracker.metadata.model_copy(
                            update={"expires": expires, "revision": 0}
                        )
                    }
                )
            )
            for tracker in trackers
        ]
        # Else already gone: expired, or a retried delete.
        gone = [self._store.key(name) for name in deletes if name in existing]
        if puts or gone:
            await server.backend.write_many(puts, create_only=False, deletes=gone)
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
            if tracker.spec.kind == "k8s":
                # Nobody types into someone's kubectl exec: its joiners only observe.
                modes = [mode for mode in modes if mode != "peer"]
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


def _items(body: dict[str, Any], key: str) -> list[Any]:
    items = body.get(key, [])
    if not isinstance(items, list):
        raise BadParameter(f'"{key}" must be a list')
    if len(items) > MAX_BATCH:
        raise BadParameter(f'at most {MAX_BATCH} items in "{key}" per call, got {len(items)}')
    return items


def _tracker(document: Any) -> SessionTracker:
    name = ""
    if isinstance(document, dict) and isinstance(document.get("metadata"), dict):
        name = str(document["metadata"].get("name", ""))
    try:
        tracker = SessionTracker.model_validate(document)
    except ValidationError as exc:
        raise BadParameter(describe_validation_error("session", name, exc)) from exc
    _session_id(tracker.name)
    return tracker


def _session_id(session_id: Any) -> str:
    if not isinstance(session_id, str) or not is_recording_id(session_id):
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
