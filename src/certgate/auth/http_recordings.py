"""Auth API routes for session recordings (DESIGN §5).

    PUT /v1/recordings/{id}?incomplete=1&truncated=1
                                           a node uploads a cast file (body: the file;
                                           truncated: the start of a longer one)
    GET /v1/recordings?since&until&user&node&limit    list, newest first
    GET /v1/recordings/{id}                its RecordingInfo
    GET /v1/recordings/{id}/cast           the cast file, streamed

Who may do what, checked before any work:

- upload: services (the RECORDING_WRITE grant), and only recordings of sessions they
  hosted: the session must have been announced by the caller (auth/session_hosts.py),
  with the header's node and user. The header line is read and checked first, before
  the rest of the body is taken; an upload with no announcement yet is refused with
  NotFound (retried by the uploader). A stored recording is write-once (the same file
  again is a retry and accepted, anything else refused and audited as
  `session.upload.failure`: the store decides, so no upload reads it first);
- list and read: a user always sees their own sessions' recordings; others' need a role
  rule on `session` (`list` to list, `read` to play), as the `auditor` preset has. The
  auth host's admin identity sees everything. The route itself only needs a signed-in
  caller (`perm.SELF`): the rest of the decision depends on what is asked for, so it is
  made here, at the top of each handler, before the store is touched. A recording the
  caller may not read is answered as one that does not exist. Fetching the cast file
  is audited (`session.recording.access`): one fetch is one playback or download.

What an upload costs auth is bounded: at most UPLOADS_PER_CALLER at a time from one
service (and MAX_UPLOADS in all), a body that pauses longer than READ_TIMEOUT is cut
off, and the duration is read from a bounded tail of the file in a thread
(asciicast.last_event_time), never by parsing the file on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import StreamReader, web

from certgate.api.identity import SYSTEM_ADMIN, Identity
from certgate.api.json_input import BODY_TIMEOUT
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
from certgate.recording.asciicast import CastReader, Header, last_event_time
from certgate.recording.store import MAX_LIST, RecordingQuery, RecordingStore, not_found

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

log = logging.getLogger("certgate.auth")

SESSION = "session"  # the role rule resource for recordings
# Uploads are kept in memory up to this size while they are checked, then on disk.
SPOOL_BYTES = 4 * 1024 * 1024
CHUNK = 256 * 1024
# A host sends its recordings one at a time; a few more cover a proxy's restart.
UPLOADS_PER_CALLER = 2
MAX_UPLOADS = 64
# The header line (a command line can be long), and the time it has to arrive.
MAX_HEADER_BYTES = 1024 * 1024
HEADER_TIMEOUT = BODY_TIMEOUT
# The longest an upload's body may pause: a stalled one holds a slot and a file.
READ_TIMEOUT = 30.0


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
        # Uploads under way per caller: name and roles (a proxy may share a node's name).
        self._uploads: dict[tuple[str, tuple[str, ...]], int] = {}

    @contextmanager
    def _upload_slot(self, caller: Identity) -> Iterator[None]:
        key = (caller.username, tuple(sorted(caller.roles)))
        if self._uploads.get(key, 0) >= UPLOADS_PER_CALLER:
            raise LimitExceeded(
                f"{caller.username} is already uploading {UPLOADS_PER_CALLER} recordings: "
                "retry later"
            )
        if sum(self._uploads.values()) >= MAX_UPLOADS:
            raise LimitExceeded(f"auth is taking {MAX_UPLOADS} uploads already: retry later")
        self._uploads[key] = self._uploads.get(key, 0) + 1
        try:
            yield
        finally:
            self._uploads[key] -= 1
            if not self._uploads[key]:
                del self._uploads[key]

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
            # As if there were none: whose session it was is not the caller's to learn.
            raise not_found(recording_id)
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
        assert caller is not None
        # Once per fetch: the web player and `cgsh play` fetch the whole file once.
        await self._api.server.audit.emit(
            "session.recording.access",
            user=caller.username,
            session_id=info.id,
            session_user=info.user,
            node=info.node,
        )
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
        if request.content_length is not None and request.content_length > MAX_RECORDING_BYTES:
            raise _too_large(recording_id)
        with self._upload_slot(caller):
            first, rest = await _header_line(request.content)
            header = CastReader([first]).header
            if header.session_id != recording_id:
                raise BadParameter(
                    f"recording {recording_id} holds session {header.session_id or '(none)'}"
                )
            # Before the rest of the body is taken: only the host that ran the session.
            await self._api.session_hosts.check_uploader(
                caller, recording_id, header.node, header.user
            )
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
                await _spool_body(request.content, spool, first + rest, recording_id)
                # Bounded, and in a thread: the tail may be on disk.
                duration = await asyncio.to_thread(last_event_time, spool)
                if duration is None:
                    raise BadParameter(
                        f"recording {recording_id} does not end with asciicast v2 events"
                    )
                spool.seek(0)
                now = self._api.server.clock.now()
                info = _info(recording_id, header, duration, incomplete, truncated, now)
                stored = await self._store_upload(caller, info, spool)
        await self._api.session_hosts.uploaded(recording_id)
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

    async def _store_upload(
        self, caller: Identity, info: RecordingInfo, spool: Any
    ) -> RecordingInfo:
        try:
            return await self._store.put(info, spool)
        except AlreadyExists as exc:
            # Write-once: a stored recording is evidence; what would replace it is
            # refused and recorded.
            await self._api.server.audit.emit(
                "session.upload.failure",
                server=caller.username,
                session_id=info.id,
                node=info.node,
                error=exc.message,
            )
            raise


def _info(
    recording_id: str,
    header: Header,
    duration: float,
    incomplete: bool,
    truncated: bool,
    now: datetime,
) -> RecordingInfo:
    return RecordingInfo(
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
        uploaded=now,
    )


async def _header_line(content: StreamReader) -> tuple[bytes, bytes]:
    """(the body's first line, what came after it in the same reads), within
    MAX_HEADER_BYTES and HEADER_TIMEOUT."""
    data = b""
    try:
        async with asyncio.timeout(HEADER_TIMEOUT):
            while b"\n" not in data and len(data) <= MAX_HEADER_BYTES:
                chunk = await content.read(CHUNK)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        raise BadParameter("the recording's header did not arrive in time") from None
    line, newline, rest = data.partition(b"\n")
    if len(line) > MAX_HEADER_BYTES:
        raise BadParameter(f"the recording's header line is longer than {MAX_HEADER_BYTES} bytes")
    return line + newline, rest


async def _spool_body(content: StreamReader, spool: Any, start: bytes, recording_id: str) -> None:
    """`start` and the rest of the body into `spool`, each read within READ_TIMEOUT."""
    received = 0
    chunk = start
    while chunk:
        received += len(chunk)
        if received > MAX_RECORDING_BYTES:
            raise _too_large(recording_id)
        spool.write(chunk)
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                chunk = await content.read(CHUNK)
        except TimeoutError:
            raise BadParameter(
                f"the upload of recording {recording_id} stalled for {READ_TIMEOUT:g}s"
            ) from None


def _too_large(recording_id: str) -> LimitExceeded:
    return LimitExceeded(f"recording {recording_id} is larger than {MAX_RECORDING_BYTES} bytes")


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadParameter(f'invalid time "{text}": use RFC 3339') from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
