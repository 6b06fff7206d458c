"""The live session core every protocol shares; protocols supply only their I/O.

    LiveClient   one authenticated client: identity, login, target, what its roles
                 allow (SessionPolicy), its sessions and joined views, when it last
                 typed. The unit the monitor cuts (monitor.py): cutting a client ends
                 every session and joined view on it, then hangs up, so nothing (a
                 second channel, a port forward) survives a lock.
    LiveSession  one session of a client: its SessionInfo, recorder (observer), joiners
                 (party), tracker updates, session.start / session.end / exec audit,
                 terminate(message, reason).

    protocol I/O (node: child process; proxy: the sshd's channel; later k8s streams)
      ──▶ LiveSession.output(data) ──▶ recorder, joiners
      ◀── SessionIO.write(bytes)       certgate's own one-line messages
      ◀── SessionIO.stop()             end the far side and the user's channel
      ──▶ LiveSession.ended(reason)    once the I/O is closed

The protocols differ only in what they hand in: node/sshd.py `_Session` (a Unix child),
proxy/agentless_session.py `RelaySession` (a relay to a stock sshd).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from certgate.api.identity import Identity
from certgate.srv.hangup import close_connection, end_all, wait_for_last_words
from certgate.srv.join import Joiner, SessionParty, membership_fields
from certgate.srv.session import (
    ObserverFactory,
    SessionInfo,
    SessionObserver,
    SessionPolicy,
    SessionTracking,
    observer_for,
)

if TYPE_CHECKING:
    from certgate.srv.registry import SessionRegistry

log = logging.getLogger(__name__)

# (event, fields) -> None: queue an audit event (the caller adds who it is).
Audit = Callable[[str, dict[str, Any]], None]


class SessionIO(Protocol):
    """What the core asks of a protocol's session."""

    def write(self, data: bytes, stderr: bool) -> None:
        """Write to the user's channel as is (never raises: a closing channel drops it)."""

    def stop(self) -> None:
        """End the far side (child, remote channel) and close the user's channel; the
        protocol calls LiveSession.ended() once it is closed."""


class LiveClient:
    """One authenticated client of a server and what it was allowed.

    `close()` hangs the client's connection up (an asyncssh connection by default);
    `audit` queues an event with the fields that name this server. A server that can end
    the connection at once and say why in the same breath (the proxy: an SSH disconnect
    with the message) passes `disconnect`, which the cut itself calls.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        login: str,
        target: str,
        client_addr: str,
        policy: SessionPolicy,
        audit: Audit,
        conn: Any = None,
        close: Callable[[], Awaitable[None]] | None = None,
        disconnect: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.login = login
        self.target = target  # node (or cluster) name, for locks that name one
        self.client_addr = client_addr
        self.policy = policy
        self.audit = audit
        self.sessions: set[LiveSession] = set()
        self.joins: set[Joiner] = set()
        self._conn = conn
        self._close = close
        self._disconnect = disconnect
        self._monotonic = monotonic
        self.last_input = monotonic()
        self.cut_reason: str | None = None
        # Set once the monitor matched this client against the locks (monitor.py).
        self.lock_checked = False

    def touch(self) -> None:
        """The client sent something (keystrokes, data): it is not idle."""
        self.last_input = self._monotonic()

    def idle_for(self) -> float:
        return self._monotonic() - self.last_input

    def cut(self, message: str, reason: str, audit_fields: dict[str, Any]) -> int:
        """Show `message` in every session and joined view and end them; how many sessions."""
        self.cut_reason = reason
        ended = end_all(self.sessions, self.joins, message, reason, audit_fields)
        if self._disconnect is not None:
            try:
                self._disconnect(message)
            except Exception:  # one client's failure must not spare the others
                log.exception("disconnecting %s failed", self.identity.username)
        return ended

    async def hang_up(self) -> None:
        """Close the connection once the last words had a chance to leave (bounded)."""
        await wait_for_last_words([*self.sessions, *self.joins])
        if self._close is not None:
            await self._close()
        else:
            await close_connection(self._conn)


class LiveSession:
    """One live session's lifecycle, whatever carries its bytes."""

    def __init__(
        self,
        client: LiveClient,
        info: SessionInfo,
        io: SessionIO,
        registry: SessionRegistry,
        *,
        observe: ObserverFactory | None = None,
        tracking: SessionTracking | None = None,
        peer_input: Callable[[bytes], None] | None = None,
    ) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self._io = io
        self._registry = registry
        self._observe = observe
        self._tracking = tracking
        self._peer_input = peer_input
        self.observer: SessionObserver | None = None
        # Terminal sessions only: who else is watching or typing (join.py).
        self.party: SessionParty | None = None
        # Where the session runs in its protocol's terms, for session.join/leave events
        # (a Kubernetes session's cluster, namespace and pod; a node adds its own name).
        self.place: dict[str, Any] = {}
        self._begun = False
        self._announced = False
        self._ended = False
        self._started_at = time.monotonic()
        self.end_reason = "exited"
        self._end_fields: dict[str, Any] = {}
        self._closed = asyncio.get_running_loop().create_future()

    # ---- starting --------------------------------------------------------------

    def open_observer(self) -> None:
        """Ask for the session's observer, whatever its kind (shell, exec or sftp, with
        a pty or without): before anything runs, so a session whose recording is
        required and impossible never starts. Raises SessionRefused."""
        # Which kinds are recorded is the observer's decision (recording_hook.py): a
        # shell without a pty (`ssh -T`) is as much a session as one with.
        self.observer = observer_for(self._observe, self.info)

    def begin(self) -> None:
        """The session is live: listed, joinable, tracked, cut by the monitor."""
        self._begun = True
        self._started_at = time.monotonic()
        self.client.sessions.add(self)
        self._registry.add_session(self)
        if self.info.tty:
            self.party = SessionParty(self._show_output, self._from_peer, self._membership)
            if self._tracking is not None:
                self._tracking.started(self.info)

    def announce(self, fields: dict[str, Any]) -> None:
        """session.start: the session runs (what ran, and how, in `fields`)."""
        self._announced = True
        self.client.audit(
            "session.start",
            {
                **self.fields(),
                "client_addr": self.client.client_addr,
                "command": self.info.command,
                "tty": self.info.tty,
                # The grants (access request ids) the session runs under.
                "access_requests": list(self.client.identity.request_ids),
                **fields,
            },
        )

    def refused(self, reason: str) -> None:
        """The session cannot start: audit why, end it without a session.end."""
        client = self.client
        log.info(
            "refused %s session %s of %s on %s: %s",
            self.info.kind, self.id, client.identity.username, client.target, reason,
        )  # fmt: skip
        client.audit(
            "session.rejected",
            {**self.fields(), "client_addr": client.client_addr, "reason": reason},
        )
        self._announced = False
        self.ended("refused")

    # ---- running ---------------------------------------------------------------

    def input(self) -> None:
        """The user typed or sent data (for the idle timeout)."""
        self.client.touch()

    def output(self, data: bytes, *, to_joiners: bool = True) -> None:
        """What the session showed the user: to the recorder and the joiners."""
        if self.observer is not None:
            self._notify(self.observer.on_output, data)
        if self.party is not None and to_joiners:
            self.party.output(data)

    def resized(self, width: int, height: int) -> None:
        if self.observer is not None:
            self._notify(self.observer.on_resize, width, height)

    def exec_finished(self, exit_code: int | None, exit_signal: str | None = None) -> None:
        """An exec's `exec` event: its exit code, or the signal that killed it."""
        if self.info.kind == "exec" and not self._ended:
            how = {"exit_signal": exit_signal} if exit_signal else {"exit_code": exit_code}
            self.client.audit("exec", {**self.fields(), "command": self.info.command, **how})

    # ---- ending ----------------------------------------------------------------

    def terminate(
        self, message: str, reason: str = "terminated", audit_fields: dict[str, Any] | None = None
    ) -> None:
        """Show `message`, then end the session (the I/O reports when it is closed).

        The recording and everyone who joined see it too: an observer of a locked
        session learns why it ended, and the recording keeps the reason."""
        if self.info.tty:
            text = f"\r\n{message}\r\n".encode()
            self._io.write(text, False)
        else:
            text = f"{message}\n".encode()
            self._io.write(text, True)
        self.output(text)
        self.end_reason = reason
        self._end_fields = audit_fields or {}
        self._io.stop()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def closed(self) -> None:
        """The user's channel is gone (after `ended`, or instead of it)."""
        if not self._closed.done():
            self._closed.set_result(None)

    def ended(self, reason: str | None = None, exit_fields: dict[str, Any] | None = None) -> None:
        """The session is over (at most once): unlisted, joiners let go, recording
        finished, session.end audited if session.start was."""
        if self._ended:
            return
        self._ended = True
        self.client.sessions.discard(self)
        self._registry.remove_session(self)
        if self.party is not None:
            self.party.end()
            if self._tracking is not None:
                self._tracking.ended(self.info)
        if self.observer is not None:
            self._notify(self.observer.on_end)
            self.observer = None
        if not self._announced:
            return  # no session.end without a session.start
        fields: dict[str, Any] = {
            **self.fields(),
            **self._end_fields,
            "duration": round(time.monotonic() - self._started_at, 3),
            "reason": reason or self.end_reason,
            **(exit_fields or {}),
        }
        self.client.audit("session.end", fields)

    @property
    def io(self) -> SessionIO:
        return self._io

    @property
    def is_ended(self) -> bool:
        return self._ended

    def fields(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "user": self.info.identity.username,
            "login": self.info.login,
            "kind": self.info.kind,
        }

    # ---- joiners -----------------------------------------------------------------

    def _show_output(self, data: bytes) -> None:
        # certgate's own lines go where output goes: the owner, the recording, joiners.
        self._io.write(data, False)
        self.output(data)

    def _from_peer(self, data: bytes) -> None:
        if self._peer_input is not None and not self._ended:
            self._peer_input(data)

    def _membership(self, event: str, member: Joiner) -> None:
        fields = membership_fields(self.id, self.info.identity.username, self.info.login, member)
        self.client.audit(event, {**self.place, **fields})
        if self.party is not None and self._tracking is not None and not self._ended:
            self._tracking.participants_changed(self.info, self.party.participants())

    def _notify(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("session observer failed; detaching it from session %s", self.id)
            self.observer = None
