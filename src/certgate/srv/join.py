"""Joining a live terminal session: observers watch it, peers type into it too.

    owner's channel ◀── output ──┬── SessionParty.output() ──▶ each JoinChannel (joiner's ssh)
    child's pty     ◀── input ───┴────────────────────────────── peers' keystrokes
                                  └─ everyone sees "certgate: bob joined (observer)"

A joiner connects like any SSH user but with the login `join:<mode>:<session id>`
(api/session_tracker.py); the server that runs the session (a node, or the proxy for an
agentless node) checks the joiner's roles and locks, then hands the session channel a
JoinChannel instead of starting a shell. A Kubernetes session runs in a kube service,
which has no SSH server: the proxy's SSH listener takes the join login and relays a
stream from the kube service (srv/remote_join.py), whose party member is a Joiner too.
A joiner first gets the last few KiB the session showed, so the screen is not blank
until the next output. Observers cannot type: Ctrl-C or Ctrl-D leaves. A joiner that
falls too far behind is dropped, never the session slowed down for it.

The party knows nothing of the child process or recording; its owner passes in how to
show text to everyone (`announce`) and how to send a peer's input to the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncssh

from certgate.api.session_tracker import JOIN_MODES
from certgate.errors import AccessDenied

log = logging.getLogger(__name__)

# What a joiner sees first: the session's most recent output, up to this much.
BACKLOG_BYTES = 32 * 1024
# A joiner whose channel holds more unsent output than this is dropped.
MAX_BEHIND_BYTES = 4 * 1024 * 1024
# Keys that make an observer leave (its other keystrokes go nowhere).
_OBSERVER_LEAVE_KEYS = (b"\x03", b"\x04")

# (event, joiner) -> None: "session.join" or "session.leave".
MembershipListener = Callable[[str, "Joiner"], None]


class Joiner(Protocol):
    """One joiner's view of a session, whatever carries it: an SSH channel here
    (JoinChannel), or a stream to the proxy for a Kubernetes session (kube/observe.py)."""

    user: str
    mode: str
    joined: datetime

    def send(self, data: bytes) -> None:
        """Show the session's output (never blocks; a joiner too far behind is dropped)."""

    def finish(self, message: str, status: int = 0) -> None:
        """Show `message`, end the view and leave the party."""

    def wait_closed(self) -> Awaitable[None]: ...


def joined_banner(session_id: str, mode: str) -> str:
    """The first line a joiner reads."""
    hint = "you can type into it" if mode == "peer" else "read-only; Ctrl-C leaves"
    return f"certgate: joined session {session_id} as {mode} ({hint})\r\n"


def join_refusal(
    mode: str, session_id: str, party: SessionParty | None, authorize: Callable[[], None]
) -> str | None:
    """Why a join login must be refused, or None: the mode must be one we have, the
    session must run here (`party`), and `authorize()` (roles, locks) must not raise."""
    if mode not in JOIN_MODES:
        return f'unknown join mode "{mode}": use observer or peer'
    if party is None or party.ended:
        return f'session "{session_id}" is not running here'
    try:
        authorize()
    except AccessDenied as exc:
        return exc.message
    except Exception:
        log.exception("authorizing a join of session %s failed", session_id)
        return "internal error while authorizing"
    return None


def membership_fields(session_id: str, owner: str, login: str, member: Joiner) -> dict[str, Any]:
    """The fields of a session.join or session.leave audit event."""
    return {
        "session_id": session_id,
        "user": member.user,
        "mode": member.mode,
        "session_user": owner,
        "login": login,
    }


class SessionParty:
    """The joiners of one live session, and the recent output a newcomer is shown."""

    def __init__(
        self,
        announce: Callable[[bytes], None],
        write_input: Callable[[bytes], None],
        on_membership: MembershipListener,
    ) -> None:
        self._announce = announce
        self._write_input = write_input
        self._on_membership = on_membership
        self._backlog: deque[bytes] = deque()
        self._backlog_size = 0
        self.members: list[Joiner] = []
        self.ended = False

    def output(self, data: bytes) -> None:
        """What the session showed its owner: keep the tail, pass it to every joiner."""
        # No copying: chunks are kept as they are and whole ones dropped from the front.
        self._backlog.append(data)
        self._backlog_size += len(data)
        while self._backlog_size - len(self._backlog[0]) >= BACKLOG_BYTES:
            self._backlog_size -= len(self._backlog.popleft())
        for member in list(self.members):
            member.send(data)

    def say(self, text: str) -> None:
        """A line from certgate to everyone in the session, the owner included."""
        self._announce(f"\r\ncertgate: {text}\r\n".encode())

    def join(self, member: Joiner) -> None:
        if self.ended:
            member.finish("certgate: the session has ended")
            return
        member.send(b"".join(self._backlog)[-BACKLOG_BYTES:])
        self.members.append(member)
        self.say(f"{member.user} joined ({member.mode})")
        self._on_membership("session.join", member)

    def leave(self, member: Joiner) -> None:
        if member not in self.members:
            return
        self.members.remove(member)
        if not self.ended:
            self.say(f"{member.user} left")
        self._on_membership("session.leave", member)

    def input(self, member: Joiner, data: bytes) -> None:
        if member.mode == "peer" and not self.ended:
            self._write_input(data)

    def end(self, message: str = "certgate: the session has ended") -> None:
        """The session is over: every joiner is told and let go."""
        self.ended = True
        for member in list(self.members):
            member.finish(message)

    def participants(self) -> list[dict[str, Any]]:
        return [
            {"user": m.user, "mode": m.mode, "joined": m.joined.isoformat()} for m in self.members
        ]


class ViewChannel(asyncssh.SSHServerSession[bytes]):
    """An SSH session channel that only shows someone else's terminal: a pty and a shell
    request are accepted, nothing is run; input ending ends nothing."""

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def eof_received(self) -> bool:
        # A joiner's input ending (`cgsh join < /dev/null`) ends nothing: it keeps watching.
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        pass  # the owner's terminal sets the size

    def break_received(self, msec: int) -> bool:
        return False


def wants_to_leave(data: bytes) -> bool:
    """An observer's keystrokes go nowhere, except these, which make it leave."""
    return any(key in data for key in _OBSERVER_LEAVE_KEYS)


class JoinChannel(ViewChannel):
    """A joiner's session channel: a view of someone else's terminal.

    `find_party()` is asked when the joiner's shell request arrives; None means the
    session has ended in the meantime. Only pty and shell requests are accepted: a
    join login runs nothing of its own. `on_input()` is called for whatever the joiner
    sends (keys, window changes; an observer's keys go nowhere, but they are input),
    for the idle timeout of the joiner's roles.
    """

    def __init__(
        self,
        user: str,
        mode: str,
        session_id: str,
        find_party: Callable[[], SessionParty | None],
        on_input: Callable[[], None] | None = None,
    ) -> None:
        self.user = user
        self.mode = mode
        self.session_id = session_id
        self.joined = datetime.now(UTC)
        self._find_party = find_party
        self._on_input = on_input
        self._party: SessionParty | None = None
        self._chan: Any = None
        self._done = False
        self._closed = asyncio.get_running_loop().create_future()

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def session_started(self) -> None:
        party = self._find_party()
        if party is None:
            self.finish("certgate: the session has ended", status=1)
            return
        self._party = party
        self._write(joined_banner(self.session_id, self.mode))
        party.join(self)

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self._on_input is not None:
            self._on_input()
        if self._party is None:
            return
        if self.mode == "peer":
            self._party.input(self, data)
        elif wants_to_leave(data):
            self.finish("certgate: you left the session")

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        # The owner's terminal sets the size; the joiner resizing its own is input.
        if self._on_input is not None:
            self._on_input()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        if self._party is not None:
            self._party.leave(self)
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Until the channel is closed (what was written to it has gone out)."""
        await asyncio.shield(self._closed)

    def send(self, data: bytes) -> None:
        if self._done or not data:
            return
        if self._chan.get_write_buffer_size() > MAX_BEHIND_BYTES:
            self.finish("certgate: you fell too far behind the session and were disconnected")
            return
        self._write(data)

    def finish(self, message: str, status: int = 0) -> None:
        """Show `message`, end the joiner's channel and leave the party."""
        if self._done:
            return
        self._done = True
        self._write(f"\r\n{message}\r\n")
        if self._party is not None:
            self._party.leave(self)
        with contextlib.suppress(OSError):
            self._chan.exit(status)

    def _write(self, data: bytes | str) -> None:
        with contextlib.suppress(OSError):
            self._chan.write(data.encode() if isinstance(data, str) else data)
