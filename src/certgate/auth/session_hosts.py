"""Which service hosts each session: the only one whose recording of it auth stores.

Host names are unique only within one role (a proxy may share a node's name), and the
session id and node of an upload come from the uploaded file, so neither says who may
upload it. Auth remembers instead who announced each session, from what the host
sends as the session starts:

    recording opened ─ session.recording.start ─▶ POST /v1/events   ─┐ claim(caller, id,
    (srv/recording_hook.py, via the durable audit spool)             │       node, user)
    terminal session ─ tracker ────────────────▶ POST /v1/sessions ─┘ /session_hosts/<id>
    (the id becomes visible to proxies here)                           first host wins

    PUT /v1/recordings/<id> ── the claim must be the caller's (name and kind), with the
                               header's node and user; stored ──▶ kept RETRY_TTL more

A claim is made only under the writer rule below, and only by the first host to
announce the session: a later claim of it by another service is refused. The recording
announcement is the lasting claim (RECORDING_TTL: a node may upload after a long
outage; its spool delivers the announcement first, whenever that is, and a host
announces again what an earlier run left as it starts: uploader.py); a tracker's claim
(TRACKER_TTL) only holds the id from the moment `GET /v1/sessions` shows it to proxies,
in case the tracker arrives first. An upload with no claim yet is refused with
NotFound, which the uploader retries: the announcement may still be on its way.

The writer rule, for trackers as for claims: a node speaks for sessions on itself (its
Node role and its own name), a kube service for the clusters it announced, a proxy for
agentless nodes, the admin identity for anything (it needs no claim).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from certgate.api.events import ADMIN
from certgate.api.identity import SYSTEM_ADMIN, SYSTEM_KUBE, SYSTEM_NODE, SYSTEM_PROXY, Identity
from certgate.api.recording import is_recording_id
from certgate.auth.audit_intake import writer_kind
from certgate.backend.base import Item
from certgate.errors import AccessDenied, AlreadyExists, NotFound

if TYPE_CHECKING:
    from certgate.auth.server import AuthServer

log = logging.getLogger("certgate.auth")

PREFIX = "/session_hosts/"
# The event a host sends when it starts recording a session (api/events.py).
RECORDING_START = "session.recording.start"
RECORDING_TTL = timedelta(days=365)
TRACKER_TTL = timedelta(days=1)
# After the recording is stored: long enough for a retry whose answer was lost.
RETRY_TTL = timedelta(days=1)


@dataclass(frozen=True)
class SessionHost:
    host: str  # the service's name
    kind: str  # and kind (node, proxy, kube): names are unique only within one
    node: str  # the node (or Kubernetes cluster) the session ran on
    user: str  # whose session it was

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, value: bytes) -> SessionHost | None:
        try:
            data = json.loads(value)
            return cls(**{name: str(data[name]) for name in ("host", "kind", "node", "user")})
        except (ValueError, TypeError, KeyError):
            return None


def key(session_id: str) -> str:
    return PREFIX + session_id


class SessionHosts:
    def __init__(self, server: AuthServer) -> None:
        self._server = server

    async def check_writer(self, caller: Identity, node: str) -> None:
        """Whether `caller` may speak for sessions on `node` (the module docstring)."""
        if caller.kind == "service":
            roles = caller.roles
            if SYSTEM_ADMIN in roles:
                return
            if SYSTEM_NODE in roles and node == caller.username:
                return
            if SYSTEM_KUBE in roles and await self._server.serves_kube_cluster(
                caller.username, node
            ):
                return
            if SYSTEM_PROXY in roles and await self._server.is_agentless(node):
                return
        raise AccessDenied(
            f'access denied: {caller.username} may not track sessions of node "{node}"'
        )

    async def claim(
        self, caller: Identity, sessions: Sequence[tuple[str, str, str]], ttl: timedelta
    ) -> None:
        """`caller` hosts these sessions, (id, node, user) each: remembered for `ttl`, or
        longer if already. AccessDenied if the writer rule refuses, or another host (or
        another node or user) claimed one first."""
        if SYSTEM_ADMIN in caller.roles or not sessions:
            return
        for node in sorted({node for _, node, _ in sessions}):
            await self.check_writer(caller, node)
        kind = writer_kind(caller)
        backend = self._server.backend
        expires = self._server.clock.now() + ttl
        held = {item.key: item for item in await backend.get_many([key(s) for s, _, _ in sessions])}
        for session_id, node, user in sessions:
            wanted = SessionHost(caller.username, kind, node, user)
            item = held.get(key(session_id))
            if item is None:
                try:
                    await backend.create(Item(key(session_id), wanted.encode(), expires=expires))
                    continue
                except AlreadyExists:  # another auth process took the same call
                    item = await backend.get(key(session_id))
            if SessionHost.decode(item.value) != wanted:
                raise AccessDenied(
                    f"access denied: session {session_id} is another service's "
                    f"(only the host that announced it first speaks for it)"
                )
            # Extended only when much of it has passed: a tracker refreshed every few
            # seconds costs a read, not a write.
            if item.expires is not None and item.expires < expires - ttl / 2:
                await backend.put(Item(item.key, item.value, expires=expires))

    async def claim_announced(self, caller: Identity, events: Iterable[dict[str, Any]]) -> None:
        """Claims from the `session.recording.start` events a service sent (as checked
        by audit_intake.py: a node's name their node). One refused is logged and its
        event stored all the same: refusing the batch would hold up the sender's spool."""
        for event in events:
            if event.get("event") != RECORDING_START:
                continue
            session_id, node, user = (event.get(f) for f in ("session_id", "node", "user"))
            if not (
                isinstance(session_id, str)
                and is_recording_id(session_id)
                and isinstance(node, str)
                and isinstance(user, str)
            ):
                log.warning("%s announced a recording without its session", caller.username)
                continue
            try:
                await self.claim(caller, [(session_id, node, user)], RECORDING_TTL)
            except AccessDenied as exc:
                log.warning("recording of session %s not claimed: %s", session_id, exc.message)

    async def check_uploader(self, caller: Identity, session_id: str, node: str, user: str) -> None:
        """Whether `caller` may upload the recording of `session_id` with this node and
        user in its header: it claimed the session, with the same node and user."""
        kind = writer_kind(caller)  # AccessDenied for anyone but a service
        if kind == ADMIN:
            return
        try:
            item = await self._server.backend.get(key(session_id))
        except NotFound:
            raise NotFound(
                f"recording {session_id} cannot be stored yet: auth has no record of "
                f"{caller.username} hosting that session"
            ) from None
        held = SessionHost.decode(item.value)
        if held is None or (held.host, held.kind) != (caller.username, kind):
            raise AccessDenied(
                f"access denied: session {session_id} was not hosted by {caller.username}: "
                "only the service that ran a session may upload its recording"
            )
        if (held.node, held.user) != (node, user):
            raise AccessDenied(
                f"access denied: recording {session_id} names {user} on {node}, but the "
                f"session was {held.user}'s on {held.node}"
            )

    async def uploaded(self, session_id: str) -> None:
        """The recording is stored: keep the claim only for a retry of the same upload."""
        backend = self._server.backend
        try:
            item = await backend.get(key(session_id))
        except NotFound:
            return
        until = self._server.clock.now() + RETRY_TTL
        if item.expires is None or item.expires > until:
            await backend.put(Item(item.key, item.value, expires=until))
