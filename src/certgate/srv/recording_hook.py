"""Which sessions a node records, and what a failed recording does to its session.

The roles' `record_session.<kind>` for the session's kind (`ssh`, `k8s`; strictest of
the caller's roles) decides:

    off          nothing is recorded
    best_effort  pty sessions are recorded; if the file cannot be created or written,
                 the session goes on (the recording is kept up to the failure and
                 uploaded marked incomplete)
    strict       every shell and command is recorded, with a pty or without (`ssh -T`,
                 `ssh node cmd`); a session whose file cannot be created is refused
                 before anything runs, and one whose writes fail is ended with a message.
                 sftp cannot be recorded (its output is a binary protocol, its uploads
                 are input), so it is refused

sftp is never recorded: under off and best_effort it runs unrecorded (audited by its
session.start and session.end), under strict it is refused (session.rejected).

Each recording opened is announced to auth (`session.recording.start`, through the
service's durable audit spool), and so is each one an earlier run left, as the service
starts (`announce_recording`): auth stores a recording only from the host that
announced its session first (auth/session_hosts.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from certgate.api.identity import Identity
from certgate.errors import CertgateError
from certgate.recording.asciicast import Header
from certgate.recording.node_recordings import NodeRecordings
from certgate.srv.session import SessionInfo, SessionObserver, SessionRefused

log = logging.getLogger("certgate.node")

# (identity, session kind) -> "off" | "best_effort" | "strict"
ModeFor = Callable[[Identity, str], str]
# (session id, message, reason) -> whether a live session was ended
EndSession = Callable[[str, str, str], bool]
# (event, fields) -> None: queue an audit event for auth (the service's spool)
Audit = Callable[[str, dict[str, Any]], None]

DEFAULT_SIZE = (80, 24)

SFTP_UNDER_STRICT = (
    "your roles require session recording (record_session strict) and sftp file "
    "transfers cannot be recorded; scp -O copies with a recorded command"
)


def announce_recording(audit: Audit, header: Header) -> None:
    """Tell auth this host records the session of `header`: its recording is this
    host's to upload (auth/session_hosts.py)."""
    audit(
        "session.recording.start",
        {
            "session_id": header.session_id,
            "user": header.user,
            "login": header.login,
            "kind": header.kind,
            "node": header.node,
        },
    )


class RecordingHook:
    """The node's session observer factory: a SessionRecorder per recorded session."""

    def __init__(
        self,
        recordings: NodeRecordings,
        node_name: str,
        mode_for: ModeFor,
        end_session: EndSession,
        audit: Audit,
    ) -> None:
        self._recordings = recordings
        self._node_name = node_name
        self._mode_for = mode_for
        self._end_session = end_session
        self._audit = audit

    def __call__(self, info: SessionInfo) -> SessionObserver | None:
        try:
            mode = self._mode_for(info.identity, info.protocol)
        except CertgateError as exc:
            # The login was just authorized with the same roles; if they cannot be read
            # now, fail closed rather than run a session that may need recording.
            raise SessionRefused(
                f"cannot tell whether this session must be recorded: {exc}"
            ) from exc
        strict = mode == "strict"
        if info.kind == "sftp":
            if strict:
                raise SessionRefused(SFTP_UNDER_STRICT)
            return None
        if mode == "off" or (not info.tty and not strict):
            return None
        header = self.header(info)
        try:
            recorder = self._recordings.open(header, on_failure=self._failed if strict else None)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if strict:
                raise SessionRefused(
                    f"your roles require session recording and it cannot be written: {reason}"
                ) from exc
            log.warning("session %s is not recorded: %s", info.id, reason)
            return None
        # Queued before the session can end (its upload waits a second after that),
        # and delivered before anything queued later: auth has the claim first.
        announce_recording(self._audit, header)
        return recorder

    def header(self, info: SessionInfo) -> Header:
        # Everything comes from the session's own description: the machine that records
        # (the proxy, for agentless nodes) has no business looking up the login here.
        width, height = info.term_size or DEFAULT_SIZE
        return Header(
            width=width,
            height=height,
            timestamp=info.started.timestamp(),
            session_id=info.id,
            user=info.identity.username,
            login=info.login,
            node=info.node or self._node_name,  # the proxy records for agentless nodes
            roles=tuple(info.identity.roles),
            kind=info.kind,
            command=info.command,
            term=info.term or "",
            shell=info.shell,
        )

    def _failed(self, session_id: str, reason: str) -> None:
        message = (
            f"certgate: session ended: your roles require session recording and it "
            f"cannot be written: {reason}"
        )
        if self._end_session(session_id, message, "recording failed"):
            log.warning("ended session %s: its recording failed (%s)", session_id, reason)
