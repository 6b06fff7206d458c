"""Auth API routes for session recordings (DESIGN §5).

    PUT /v1/recordings/{id}?incomplete=1&truncated=1
                                           a node uploads a cast file (body: the file;
                                           truncated: the start of a longer one)
    GET /v1/recordings?since&until&user&node&limit    list, newest first
    GET /v1/recordings/{id}                its RecordingInfo
    GET /v1/recordings/{id}/cast           the cast file, streamed

Who may do what, checked before any work:

- upload: nodes (the RECORDING_WRITE grant), and only recordings of their own sessions
  (the header's node must be the caller); a stored recording is write-once (the same
  file again is a retry and accepted, anything else refused and audited as
  `session.upload.failure`: the store decides, so no upload reads it first; a file from
  another node differs from the stored one in its header's node at least);
- list and read: a user always sees their own sessions' recordings; others' need a role
  rule on `session` (`list` to list, `read` to play), as the `auditor` preset has. The
  auth host's admin identity sees everything. The route itself only needs a signed-in
  caller (`perm.SELF`): the rest of the decision depends on what is asked for, so it is
  made here, at the top of each handler, before the store is touched.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.api.identity import SYSTEM_ADMIN, SYSTEM_KUBE, SYSTEM_PROXY, Identity
from certgate.api.recording import (
    MAX_RECORDING_BYTES,
    RecordingInfo,
    check_recording_id,
    is_recording_id,
)
from certgate.auth import permissions as perm
from certgate.auth.http_body import query_flag, query_int
from certgate.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    ConnectionProblem,
    LimitExceeded,
    NotFound,
)
from certgate.recording.asciicast import last_event_time, read_header
from certgate.recording.store import MAX_LIST, RecordingQuery, RecordingStore, not_found

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

log = logging.getLogger("certgate.auth")

SESSION = "session"  # the role rule resource for recordings
# Uploads are kept in memory up to this size while they are checked, then on disk.
SPOOL_BYTES = 4 * 1024 * 1024
CHUNK = 256 * 1024


def add_recording_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    routes = RecordingRoutes(api)
    add = api._handler
    router.add_put("/v1/recordings/{id}", add(perm.RECORDING_WRITE, "create", routes.upload))
    router.add_get("/v1/recordings", add(perm.SELF, "read", routes.list))
    router.add_get("/v1/recordings/{id}", add(perm.SELF, "read", routes.info))
    router.add_get("/v1/recordings/{id}/cast", add(perm.SELF, "read", routes.cast))


class RecordingRoutes:
    def __init__(self, api: AuthAPI) -> None:
        self._api = api

    @property
    def _store(self) -> RecordingStore:
        store = self._api.recordings
        if store is None:
            raise ConnectionProblem("this auth server has no recordings store configured")
        return store

    async def _sees_all(self, caller: Identity, verb: str) -> bool:
        """Whether `caller` may `verb` every user's recordings, not just their own."""
        if caller.kind == "service":
            return SYSTEM_ADMIN in caller.roles
        role_set = await self._api.authorizer.role_set(caller)
        return role_set.allows_rule(SESSION, verb)

    async def _readable(self, request: web.Request, caller: Identity | None) -> RecordingInfo:
        """The recording the request names, if the caller may read it."""
        assert caller is not None
        recording_id = request.match_info["id"]
        if not is_recording_id(recording_id):
            raise NotFound(f'recording "{recording_id}" not found: recording ids are session UUIDs')
        info = await self._store.info(recording_id)
        if info.user != caller.username and not await self._sees_all(caller, "read"):
            raise AccessDenied(
                f'access denied to recording "{recording_id}": it is {info.user}\'s session and '
                f'your roles do not allow "read" on "{SESSION}"'
            )
        return info

    # ---- routes --------------------------------------------------------------------

    async def list(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        q = request.query
        query = RecordingQuery(
            since=_time(q.get("since")),
            until=_time(q.get("until")),
            user=q.get("user") or None,
            node=q.get("node") or None,
            limit=query_int(request, "limit", 1000, MAX_LIST),
        )
        if not await self._sees_all(caller, "list"):
            if query.user not in (None, caller.username):
                raise AccessDenied(
                    f"access denied to {query.user}'s recordings: your roles do not allow "
                    f'"list" on "{SESSION}" (you can list your own)'
                )
            query = RecordingQuery(
                since=query.since,
                until=query.until,
                user=caller.username,
                node=query.node,
                limit=query.limit,
            )
        return [info.to_dict() for info in await self._store.search(query)]

    async def info(self, request: web.Request, caller: Identity | None) -> Any:
        return (await self._readable(request, caller)).to_dict()

    async def cast(self, request: web.Request, caller: Identity | None) -> Any:
        info = await self._readable(request, caller)
        chunks = self._store.stream(info.id)
        try:
            first = await anext(chunks, b"")
        except NotFound:
            raise not_found(info.id) from None
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-asciicast; charset=utf-8"}
        )
        response.content_length = info.size
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def upload(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        recording_id = check_recording_id(request.match_info["id"])
        truncated = query_flag(request, "truncated")
        incomplete = query_flag(request, "incomplete") or truncated
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            received = 0
            async for chunk in request.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > MAX_RECORDING_BYTES:
                    raise LimitExceeded(
                        f"recording {recording_id} is larger than {MAX_RECORDING_BYTES} bytes"
                    )
                spool.write(chunk)
            spool.seek(0)
            header = read_header(spool)
            if header.session_id != recording_id:
                raise BadParameter(
                    f"recording {recording_id} holds session {header.session_id or '(none)'}"
                )
            is_admin = SYSTEM_ADMIN in caller.roles
            own = (
                header.node == caller.username
                or (
                    # Proxies record (and upload) the sessions of agentless OpenSSH nodes.
                    SYSTEM_PROXY in caller.roles
                    and await self._api.server.is_agentless(header.node)
                )
                or (
                    # Kube services record exec sessions in the clusters they serve.
                    SYSTEM_KUBE in caller.roles
                    and await self._api.server.serves_kube_cluster(caller.username, header.node)
                )
            )
            if not own and not is_admin:
                raise AccessDenied(
                    f"access denied: node {caller.username} may not upload recordings of "
                    f'node "{header.node}"'
                )
            spool.seek(0)
            duration = last_event_time(spool)
            spool.seek(0)
            info = RecordingInfo(
                id=recording_id,
                user=header.user,
                login=header.login,
                node=header.node,
                session_kind=header.kind,
                command=header.command,
                roles=list(header.roles),
                start=datetime.fromtimestamp(header.timestamp, UTC),
                duration=round(duration, 3),
                incomplete=incomplete,
                truncated=truncated,
                uploaded=self._api.server.clock.now(),
            )
            try:
                stored = await self._store.put(info, spool)
            except AlreadyExists as exc:
                # Write-once: a stored recording is evidence; what would replace it is
                # refused and recorded.
                await self._api.server.audit.emit(
                    "session.upload.failure",
                    server=caller.username,
                    session_id=recording_id,
                    node=header.node,
                    error=exc.message,
                )
                raise
        await self._api.server.audit.emit(
            "session.upload",
            server=caller.username,
            session_id=recording_id,
            user=stored.user,
            login=stored.login,
            node=stored.node,
            kind=stored.session_kind,
            duration=stored.duration,
            size=stored.size,
            incomplete=stored.incomplete,
            # Not `truncated`: that name lists the fields the size caps cut short.
            recording_truncated=stored.truncated,
        )
        return stored.to_dict()


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadParameter(f'invalid time "{text}": use RFC 3339') from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
