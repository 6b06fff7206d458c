"""What a live session is, independent of its protocol: who, where, what it may do, who
observes it and who is told when it starts and ends.

Node SSH sessions, agentless relays at the proxy and (later) Kubernetes exec and web
terminal sessions all describe themselves with these types.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from certgate.api.identity import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionPolicy:
    """What an authorized connection may do beyond running sessions.

    Built by the authorizer from the caller's roles. New fields must default to the
    restrictive choice so an older authorizer grants nothing new by accident.
    """

    port_forwarding: bool = False
    forward_agent: bool = False
    # `ssh -R` listens where the client asks; False: on loopback only.
    remote_bind_any: bool = False
    # The session monitor (monitor.py) ends the client's sessions after this long
    # without input from it (client_idle_timeout), in seconds.
    idle_timeout: float | None = None
    # ... and when this moment passes (disconnect_expired_cert: the certificate's expiry).
    expires: datetime | None = None


# What kind of session, in the terms of role options (record_session.<kind>,
# join_sessions kinds). The web terminal's sessions are SSH sessions at the node; "web"
# names them where the proxy itself serves one.
SessionProtocol = Literal["ssh", "k8s", "web"]


@dataclass(frozen=True)
class SessionInfo:
    """A live session, as `NodeSSHServer.sessions()` lists it: plain data, supplied by
    the protocol that runs it (the session layer looks nothing up on this machine)."""

    id: str
    identity: Identity
    login: str
    kind: str  # "shell", "exec" or "sftp"
    started: datetime
    client_addr: str
    command: str | None = None
    tty: bool = False
    term_size: tuple[int, int] | None = None  # (columns, rows) when the session began
    term: str | None = None  # the client's TERM, for pty sessions
    node: str = ""  # set by the proxy for agentless nodes; a node's own sessions leave it ""
    protocol: SessionProtocol = "ssh"
    # The login's shell where the protocol knows it (a node's own account lookup); the
    # proxy cannot know an agentless node's accounts and leaves it "".
    shell: str = ""


class SessionObserver(Protocol):
    """Sees what a session shows; a session recorder implements it.

    The factory is asked for every session (shell, exec or sftp, with a pty or without),
    before the child is started; it returns None to observe nothing, and may raise
    SessionRefused to refuse the session (recording required but impossible).
    Called on the event loop in the data path: keep each call cheap and non-blocking
    (buffer and hand off). An exception detaches the observer, never the session; an
    observer that must stop the session calls `NodeSSHServer.end_session`.
    """

    def on_output(self, data: bytes) -> None: ...

    def on_resize(self, width: int, height: int) -> None: ...

    def on_end(self) -> None: ...


class SessionRefused(Exception):
    """Raised by an observer factory: the session must not start (the message says why)."""


def observer_for(factory: ObserverFactory | None, info: SessionInfo) -> SessionObserver | None:
    """The factory's observer for a session; SessionRefused passes, other errors only
    cost the session its observer (and are logged)."""
    if factory is None:
        return None
    try:
        return factory(info)
    except SessionRefused:
        raise
    except Exception:
        log.exception("session observer factory failed for session %s", info.id)
        return None


class SessionTracking(Protocol):
    """Told about terminal sessions as they start, gain or lose joiners, and end.

    Called on the event loop; keep each call cheap (queue and return)."""

    def started(self, info: SessionInfo) -> None: ...

    def participants_changed(
        self, info: SessionInfo, participants: list[dict[str, Any]]
    ) -> None: ...

    def ended(self, info: SessionInfo) -> None: ...


Authorizer = Callable[[Identity, str, str], Awaitable[SessionPolicy]]
# (joiner, the session's owner, mode) -> the joiner's policy, or AccessDenied
JoinAuthorizer = Callable[[Identity, SessionInfo, str], SessionPolicy]
ObserverFactory = Callable[[SessionInfo], SessionObserver | None]
SessionPredicate = Callable[[Identity, str], bool]
