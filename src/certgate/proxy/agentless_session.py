"""The channels the proxy relays between a user and an agentless sshd.

    user ──session channel──▶ RelaySession ──create_session──▶ sshd
            pty-req, env, shell/exec/subsystem   replayed as one request once the
                                                 session starts
            data, eof, window-change,  ────────▶ passed on as they come
            signal, break
            ◀──────── data, stderr, eof; exit-status / exit-signal when sshd closes

    -L  user direct-tcpip    ──▶ ChannelPipe ◀──▶ ChannelPipe ──direct-tcpip──▶ sshd
    -R  sshd forwarded-tcpip ──▶ ChannelPipe ◀──▶ ChannelPipe ──forwarded-tcpip──▶ user

Bytes are handed from one channel to the other as they arrive, never parsed or copied
into streams; when one side's send buffer fills it pauses reading on the other, so flow
control runs end to end (a slow client slows the sshd's output, not the proxy's memory).

What a session may do (port forwarding, which Unix user) was decided when the user
authenticated (agentless_user.py); this module relays. Recording, joiners, trackers,
audit and termination are the session core's (srv/live.py), as on a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import asyncssh

from certgate.srv.live import LiveClient, LiveSession
from certgate.srv.registry import SessionRegistry
from certgate.srv.session import ObserverFactory, SessionInfo, SessionRefused, SessionTracking
from certgate.srv.session_channel import WRITE_HIGH_WATER, SessionChannel

log = logging.getLogger("certgate.proxy.agentless")


class RelayHost(Protocol):
    """What a relayed session needs of the forwarder that serves it (agentless.py)."""

    @property
    def registry(self) -> SessionRegistry: ...

    @property
    def observer_factory(self) -> ObserverFactory | None: ...

    @property
    def tracking(self) -> SessionTracking | None: ...


class RelaySession(SessionChannel):
    """One session channel of the user, relayed to one session channel on the sshd.

    The I/O of a LiveSession (srv/live.py), which owns the rest of its life.
    """

    def __init__(
        self,
        client: LiveClient,
        host: RelayHost,
        onward: asyncssh.SSHClientConnection,
    ) -> None:
        super().__init__(client)
        self._host = host
        self._onward_conn = onward
        self._onward: Any = None  # the sshd's session channel, once open
        self._subsystem: str | None = None
        self._early: list[bytes] = []
        self._early_eof = False
        self._task: asyncio.Task[None] | None = None
        self._exit_status: int | None = None
        self._exit_signal: tuple[str, bool, str, str] | None = None

    @property
    def info(self) -> SessionInfo | None:
        return self.core.info if self.core is not None else None

    # ---- the user's requests -------------------------------------------------

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return False
        self._kind, self._subsystem = "sftp", subsystem
        return True

    def session_started(self) -> None:
        client = self._client
        # No shell: the proxy cannot know the agentless node's accounts.
        info = self.session_info(node=client.target)
        host = self._host
        core = self.core = LiveSession(
            client,
            info,
            self,
            host.registry,
            observe=host.observer_factory,
            tracking=host.tracking,
            peer_input=self._peer_input,
        )
        try:
            core.open_observer()
        except SessionRefused as exc:
            self._refuse(str(exc))
            return
        core.begin()
        self._task = asyncio.create_task(self._open_onward(), name=f"agentless session {self.id}")
        self._task.add_done_callback(_log_crash)

    async def _open_onward(self) -> None:
        try:
            chan, _ = await self._onward_conn.create_session(
                lambda: _OnwardSide(self),
                command=self._command,
                subsystem=self._subsystem,
                env=self._chan.get_environment(),
                send_env=None,
                request_pty="force" if self._term_size is not None else False,
                term_type=self._term,
                term_size=self._term_size,
                term_modes=self._term_modes,
                encoding=None,
            )
        except (asyncssh.Error, OSError) as exc:
            reason = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
            self._refuse(f"sshd of node {self._client.target} refused the session: {reason}")
            return
        assert self.core is not None
        if self.core.is_ended:  # the user went away or the session was ended meanwhile
            chan.close()
            return
        self._onward = chan
        chan.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        for data in self._early:
            chan.write(data)
        self._early.clear()
        if self._early_eof:
            chan.write_eof()
        self._chan.resume_reading()
        self.core.announce({})

    def _refuse(self, reason: str) -> None:
        assert self.core is not None
        self.core.refused(reason)
        with contextlib.suppress(OSError):
            self._chan.write_stderr(f"certgate: cannot start session: {reason}\r\n".encode())
            self._chan.exit(255)

    # ---- user → sshd -----------------------------------------------------------

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.core is not None:
            self.core.input()
        if self._onward is not None:
            self._onward.write(data)
        else:
            # The sshd's session is still opening: hold this, read no more until it is.
            self._early.append(data)
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        if self._onward is not None:
            self._onward.write_eof()
        else:
            self._early_eof = True
        return True  # keep the channel open for the sshd's remaining output

    def resize_target(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._onward is not None:
            with contextlib.suppress(OSError):
                self._onward.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self._onward is not None:
            with contextlib.suppress(OSError):
                self._onward.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._onward is None:
            return False
        with contextlib.suppress(OSError):
            self._onward.send_break(msec)
        return True

    def pause_writing(self) -> None:
        if self._onward is not None:
            self._onward.pause_reading()

    def resume_writing(self) -> None:
        if self._onward is not None:
            self._onward.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._onward is not None:
            self._onward.close()
        core = self.core
        if core is None:
            return
        reason = core.end_reason
        if reason == "exited" and self._exit_status is None and not self._exit_signal:
            reason = "disconnected"
        core.ended(reason, self._exit_fields())
        core.closed()

    # ---- sshd → user (from _OnwardSide) ------------------------------------------

    def output(self, data: bytes, datatype: Any) -> None:
        try:
            self._chan.write(data, datatype)
        except OSError:
            # The user's channel is closing: nothing more to relay.
            if self._onward is not None:
                self._onward.close()
            return
        if self.core is not None:
            self.core.output(data, to_joiners=datatype is None)

    def _peer_input(self, data: bytes) -> None:
        if self._onward is not None:
            self._onward.write(data)

    def output_eof(self) -> None:
        with contextlib.suppress(OSError):
            self._chan.write_eof()

    def exit_status(self, status: int) -> None:
        self._exit_status = status

    def exit_signal(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._exit_signal = (signal, core_dumped, msg, lang)

    def onward_closed(self) -> None:
        """The sshd closed its channel: pass the exit on, then close ours."""
        self._onward = None
        core = self.core
        if core is not None:
            code = self._exit_status
            if code is None and self._exit_signal is not None:
                code = -1
            core.exec_finished(code)
        with contextlib.suppress(OSError):
            if self._exit_status is not None:
                self._chan.exit(self._exit_status)
            elif self._exit_signal is not None:
                self._chan.exit_with_signal(*self._exit_signal)
            else:
                self._chan.close()
        if core is not None:
            core.ended(None, self._exit_fields())

    def _exit_fields(self) -> dict[str, Any]:
        if self._exit_status is not None:
            return {"exit_code": self._exit_status}
        if self._exit_signal is not None:
            return {"exit_signal": self._exit_signal[0]}
        return {}

    # ---- SessionIO (what the core asks of us) ------------------------------------

    def stop(self) -> None:
        """End the sshd's session and close the user's channel."""
        if self._onward is not None:
            self._onward.close()
        self._chan.close()


class _OnwardSide(asyncssh.SSHClientSession[bytes]):
    """The sshd's end of a RelaySession."""

    def __init__(self, relay: RelaySession) -> None:
        self._relay = relay
        self._chan: Any = None

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._relay.output(data, datatype)

    def eof_received(self) -> bool:
        self._relay.output_eof()
        return True  # exit-status and the close are still to come

    def exit_status_received(self, status: int) -> None:
        self._relay.exit_status(status)

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._relay.exit_signal(signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        chan = self._relay._chan
        if chan is not None:
            chan.pause_reading()

    def resume_writing(self) -> None:
        chan = self._relay._chan
        if chan is not None:
            chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.onward_closed()


class ChannelPipe(asyncssh.SSHTCPSession[bytes]):
    """One end of a forwarded TCP connection relayed between two SSH channels.

    Either end may open first and receive data before the other exists: that data is
    held until the other end's channel is made.
    """

    def __init__(self) -> None:
        self.chan: Any = None
        self.peer: ChannelPipe | None = None
        self._held: list[bytes] = []
        self._held_eof = False
        self._close_when_made = False

    @classmethod
    def pair(cls) -> tuple[ChannelPipe, ChannelPipe]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        chan.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        for data in self._held:
            chan.write(data)
        self._held.clear()
        if self._held_eof:
            chan.write_eof()
        if self._close_when_made:
            chan.close()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.peer is not None:
            self.peer.send(data)

    def eof_received(self) -> bool:
        if self.peer is not None:
            self.peer.send_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.resume_reading()

    # what the peer asks of this end's channel

    def send(self, data: bytes) -> None:
        if self.chan is None:
            self._held.append(data)
            return
        with contextlib.suppress(OSError):
            self.chan.write(data)

    def send_eof(self) -> None:
        if self.chan is None:
            self._held_eof = True
            return
        with contextlib.suppress(OSError):
            self.chan.write_eof()

    def close(self) -> None:
        if self.chan is None:
            self._close_when_made = True
        else:
            self.chan.close()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("agentless session task failed", exc_info=task.exception())
