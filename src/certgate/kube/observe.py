"""Observers of the kube service's exec sessions: the service end of srv/remote_join.py.

    proxy ──mTLS──▶ KubeForwarder ── X-Certgate-Observe-Session ──▶ KubeObservers.serve
                                        │ the session runs here, with a terminal
                                        │ the joiner's locks; join_sessions for kind k8s
                                        ▼
                     a StreamJoiner in the session's party (srv/join.py), on a LiveClient
                     of its own: the monitor ends the view when a lock names the joiner
                     or its certificate expires (disconnect_expired_cert of its roles),
                     and the party ends it (with the reason) when the session ends

Only observers: typing into someone's kubectl exec (peer) is refused at the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from certgate.access.cached_access import CachedAccess
from certgate.api.identity import Identity
from certgate.api.session_tracker import join_login
from certgate.errors import AccessDenied, CertgateError, NotFound
from certgate.kube.filtering import answer
from certgate.srv.authorize import authorize_join
from certgate.srv.http1 import Head, response_head
from certgate.srv.http1_server import both
from certgate.srv.join import MAX_BEHIND_BYTES, SessionParty, join_refusal, joined_banner
from certgate.srv.live import Audit, LiveClient
from certgate.srv.registry import SessionRegistry
from certgate.srv.remote_join import (
    CLIENT_ADDR_HEADER,
    OBSERVE_SESSION_HEADER,
    identity_from_header,
)
from certgate.srv.session import SessionPolicy

log = logging.getLogger("certgate.kube")

MODE = "observer"


class StreamJoiner:
    """An observer whose view is a stream to the proxy (relayed into its SSH channel)."""

    def __init__(self, user: str, writer: asyncio.StreamWriter) -> None:
        self.user = user
        self.mode = MODE
        self.joined = datetime.now(UTC)
        self.party: SessionParty | None = None
        self.done = asyncio.Event()
        self._writer = writer

    def send(self, data: bytes) -> None:
        if self.done.is_set() or not data:
            return
        if self._writer.transport.get_write_buffer_size() > MAX_BEHIND_BYTES:
            self.finish("certgate: you fell too far behind the session and were disconnected")
            return
        self._writer.write(data)

    def finish(self, message: str, status: int = 0) -> None:
        if self.done.is_set():
            return
        self.done.set()
        if not self._writer.is_closing():
            self._writer.write(f"\r\n{message}\r\n".encode())
            self._writer.close()  # what was written still leaves first
        if self.party is not None:
            self.party.leave(self)

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def hang_up(self) -> None:
        self.finish("certgate: you left the session")
        await self.wait_closed()


class KubeObservers:
    def __init__(self, registry: SessionRegistry, access: CachedAccess, audit: Audit) -> None:
        self._registry = registry
        self._access = access
        self._audit = audit

    async def serve(
        self, head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One observer, from the proxy's request until either side ends the view."""
        session_id = head.get(OBSERVE_SESSION_HEADER) or ""
        client_addr = head.get(CLIENT_ADDR_HEADER) or ""
        login = join_login(MODE, session_id)
        identity: Identity | None = None
        session = self._registry.session(session_id)
        try:
            identity = identity_from_header(head)
            if session is None or session.party is None or session.party.ended:
                raise NotFound(f'session "{session_id}" is not running here')
            owner = session.info
            who = identity
            policy = SessionPolicy()

            def authorize() -> None:
                nonlocal policy
                policy = authorize_join(self._access, who, owner.identity, MODE, owner.node, "k8s")
                # The proxy sends nothing of the observer's on this stream: it could only
                # ever look idle, so no idle timeout.
                policy = replace(policy, idle_timeout=None)

            refusal = join_refusal(MODE, session_id, session.party, authorize)
            if refusal is not None:
                raise AccessDenied(refusal)
        except CertgateError as exc:
            self._reject(identity, login, client_addr, session_id, exc.message)
            reason = "NotFound" if isinstance(exc, NotFound) else "Forbidden"
            await answer(writer, exc.http_status, reason, exc.message)
            return
        assert session is not None and session.party is not None
        member = StreamJoiner(identity.username, writer)
        member.party = session.party
        client = LiveClient(
            identity=identity,
            login=login,
            target=session.info.node,
            client_addr=client_addr,
            policy=policy,
            audit=self._audit,
            close=member.hang_up,
        )
        client.joins.add(member)
        self._registry.add_client(client)
        headers = [("Content-Type", "application/octet-stream"), ("Connection", "close")]
        writer.write(response_head(200, "OK", headers).encode())
        writer.write(joined_banner(session_id, MODE).encode())
        try:
            session.party.join(member)  # the recent output first, then live
            await both(_until_eof(reader), _until_set(member.done), log=log)
        finally:
            member.finish("certgate: you left the session")  # the proxy closed: a no-op write
            self._registry.remove_client(client)
            client.joins.clear()

    def _reject(
        self,
        identity: Identity | None,
        login: str,
        client_addr: str,
        session_id: str,
        reason: str,
    ) -> None:
        user = identity.username if identity is not None else ""
        log.info("refused %s as observer of session %s: %s", user or "?", session_id, reason)
        fields: dict[str, Any] = {
            "user": user,
            "login": login,
            "reason": reason,
            "client_addr": client_addr,
        }
        self._audit("session.rejected", fields)


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """The proxy sends nothing after its request: its closing is the joiner leaving."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(4096):
            pass


async def _until_set(event: asyncio.Event) -> None:
    await event.wait()
