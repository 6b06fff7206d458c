"""A user's SSH session channel, as the servers that run sessions see it: the node's
(a child process, node/sshd.py) and the proxy's for agentless nodes (the sshd's own
session channel, proxy/agentless_session.py).

request   pty-req, shell and exec are noted as they come; a pty of 0 columns or 0 rows
          is 80x24 (as sshd does). Subsystems are each server's own
start     the SessionInfo of the request and the user; the LiveSession (srv/live.py)
          owns the rest of the session's life
resize    a window change of a usable size goes to what runs the session, then to the
          session core (recording, joiners, idle time)
write     what the core writes to the user (a lock's message) never raises: the channel
          may be closing already
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncssh

from certgate.srv.live import LiveClient, LiveSession
from certgate.srv.session import SessionInfo

# A channel queues at most this much output before its source is paused: a few SSH
# packets' worth keeps the pipe full without holding megabytes per session.
WRITE_HIGH_WATER = 256 * 1024


class SessionChannel(asyncssh.SSHServerSession[bytes]):
    """One session channel of a logged-in user, from its request to its SessionInfo."""

    def __init__(self, client: LiveClient) -> None:
        self._client = client
        self.id = str(uuid.uuid4())
        self.core: LiveSession | None = None
        self._chan: Any = None
        self._kind = ""
        self._command: str | None = None
        self._term: str | None = None
        self._term_size: tuple[int, int, int, int] | None = None
        self._term_modes: dict[int, int] = {}

    def resize_target(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        """Pass a window change on to what runs the session."""
        raise NotImplementedError

    # ---- the request -----------------------------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self._chan = chan
        chan.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        self._term = term_type
        width, height = term_size[0] or 80, term_size[1] or 24
        self._term_size = (width, height, term_size[2], term_size[3])
        self._term_modes = dict(term_modes or {})
        return True

    def shell_requested(self) -> bool:
        self._kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self._kind, self._command = "exec", command
        return True

    def session_info(self, **more: Any) -> SessionInfo:
        """What the session is, as the user asked for it (`more`: the server's own fields)."""
        client = self._client
        size = self._term_size
        return SessionInfo(
            id=self.id,
            identity=client.identity,
            login=client.login,
            kind=self._kind,
            started=datetime.now(UTC),
            client_addr=client.client_addr,
            command=self._command,
            tty=size is not None,
            term_size=(size[0], size[1]) if size is not None else None,
            term=self._term,
            protocol="ssh",
            **more,
        )

    # ---- while it runs ---------------------------------------------------------------

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if width <= 0 or height <= 0:
            return
        self._term_size = (width, height, pixwidth, pixheight)
        self.resize_target(width, height, pixwidth, pixheight)
        if self.core is not None:
            self.core.input()
            self.core.resized(width, height)

    # ---- SessionIO (what the core asks of us) ----------------------------------------

    def write(self, data: bytes, stderr: bool) -> None:
        with contextlib.suppress(OSError):
            if stderr:
                self._chan.write_stderr(data)
            else:
                self._chan.write(data)
