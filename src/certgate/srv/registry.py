"""The live sessions and clients of one process, whatever their protocol.

A node's SSH server, the proxy's agentless forwarder (and later Kubernetes exec and
the web terminal) register here; the monitor (monitor.py) cuts registered clients,
joiners find sessions here, `sessions()` lists them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from certgate.api.identity import Identity
from certgate.srv.join import SessionParty
from certgate.srv.live import LiveClient, LiveSession
from certgate.srv.session import SessionInfo

log = logging.getLogger(__name__)

# (client) -> whether to cut it
ClientPredicate = Callable[[LiveClient], bool]


class SessionRegistry:
    def __init__(self) -> None:
        self._clients: set[LiveClient] = set()
        self._sessions: dict[str, LiveSession] = {}

    # ---- clients ---------------------------------------------------------------

    def add_client(self, client: LiveClient) -> None:
        self._clients.add(client)

    def remove_client(self, client: LiveClient) -> None:
        self._clients.discard(client)

    def clients(self) -> list[LiveClient]:
        return list(self._clients)

    # ---- sessions --------------------------------------------------------------

    def add_session(self, session: LiveSession) -> None:
        self._sessions[session.id] = session

    def remove_session(self, session: LiveSession) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def session(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def sessions(self) -> list[SessionInfo]:
        """The sessions running now."""
        return [s.info for s in self._sessions.values()]

    def party(self, session_id: str) -> SessionParty | None:
        """The joiners' side of a live terminal session, if it runs here."""
        session = self._sessions.get(session_id)
        return session.party if session is not None else None

    def end_session(self, session_id: str, message: str, reason: str = "terminated") -> bool:
        """End one live session, showing `message` first; False if it is not running.

        For observers that cannot go on (a recording that must be written and cannot).
        """
        session = self._sessions.get(session_id)
        if session is None:
            return False
        session.terminate(message, reason)
        return True

    # ---- cutting clients -------------------------------------------------------

    async def cut(
        self,
        predicate: ClientPredicate,
        message: str,
        reason: str,
        audit_fields: dict[str, Any] | None = None,
    ) -> int:
        """End every session and joined view of the matching clients, showing `message`
        first, then hang them up. Returns how many sessions were ended."""
        victims, ended = self.cut_now(predicate, message, reason, audit_fields)
        await hang_up(victims)
        return ended

    def cut_now(
        self,
        predicate: ClientPredicate,
        message: str,
        reason: str,
        audit_fields: dict[str, Any] | None = None,
    ) -> tuple[list[LiveClient], int]:
        """The part of `cut` users see, for every matching client in one pass of the
        event loop: the message written and every channel closed (their packets leave
        together at the end of the pass). Returns the clients, for `hang_up`, and how
        many sessions ended. Nothing here waits, so a thousand clients are cut at once
        and the bookkeeping (hang-ups, recordings, audit) follows."""
        victims = [c for c in list(self._clients) if c.cut_reason is None and predicate(c)]
        ended = sum(c.cut(message, reason, audit_fields or {}) for c in victims)
        return victims, ended

    async def terminate_sessions(
        self,
        predicate: Callable[[Identity, str], bool],
        message: str,
        reason: str = "terminated",
        audit_fields: dict[str, Any] | None = None,
        target: str | None = None,
    ) -> int:
        """`cut` by (identity, login), on `target` only if given."""
        return await self.cut(
            lambda c: (target is None or c.target == target) and predicate(c.identity, c.login),
            message,
            reason,
            audit_fields,
        )

    def abort(self) -> None:
        """Server shutdown: forget everything (connections are aborted by their server)."""
        self._clients.clear()


async def hang_up(clients: list[LiveClient]) -> None:
    """Close the connections of clients that `cut_now` cut, all at once (each waits,
    bounded, for its last words to leave)."""
    if not clients:
        return
    results = await asyncio.gather(*(c.hang_up() for c in clients), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.warning("hanging up a cut client failed: %s", result)
