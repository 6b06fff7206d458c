"""The streams of an upgraded Kubernetes call, relayed both ways.

    exec / attach over WebSocket   relay_frames: frame by frame (wsframes.py), showing the
                                   LiveSession what the user sees (stdout/stderr), when
                                   they type (stdin), resizes, and the exit status
    anything else (SPDY, port-forward)  relay_raw: bytes as they come

ExecIO is the session's SessionIO: certgate's own words reach the user as stderr frames
(WebSocket exec/attach only), and stop() closes both sides.
"""

from __future__ import annotations

import asyncio
import contextlib

from certgate.kube import wsframes
from certgate.srv.live import LiveClient, LiveSession
from certgate.srv.splice import splice


class ExecIO:
    """A kube session's SessionIO: certgate's words go to the user as stderr frames of
    the channel protocol (WebSocket); on a raw stream (SPDY, port-forward) certgate
    cannot speak, and only closes it."""

    def __init__(self, writer: asyncio.StreamWriter, framed: bool = True) -> None:
        self._writer = writer
        self.framed = framed
        self.upstream: asyncio.StreamWriter | None = None
        self.stopped = False
        self.closed = asyncio.Event()

    def write(self, data: bytes, stderr: bool) -> None:
        if self.stopped or not self.framed or self._writer.is_closing():
            return
        channel = wsframes.STDERR if stderr else wsframes.STDOUT
        self._writer.write(wsframes.channel_frame(channel, data))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if not self._writer.is_closing():
            if self.framed:
                self._writer.write(wsframes.failure_status("session ended by certgate"))
                self._writer.write(wsframes.close_frame())
            self._writer.close()
        if self.upstream is not None:
            self.upstream.close()

    async def hang_up(self) -> None:
        self.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.closed.wait()


async def relay_frames(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    session: LiveSession,
    io: ExecIO,
) -> int | None:
    """Relay both ways frame by frame, showing the session what it needs to see; the
    exit code from the status channel, if one came.

    The frames are read in passing at the transports (splice taps): no stream buffers,
    no task woken per read, no copy. Each side passes on whole frames only (the rest of a
    frame cut by a read waits in the splice's buffer for the next), so certgate's own
    frames (ExecIO.write, stop) never land inside one of the user's."""
    exit_code: list[int | None] = [None]
    from_user_frames, to_user_frames = wsframes.FrameReader(), wsframes.FrameReader()

    def from_user(data: memoryview) -> tuple[list[memoryview], int]:
        if io.stopped:
            return [], len(data)
        found, used = from_user_frames.feed(data)
        for frame in found:
            if frame.channel == wsframes.STDIN:
                session.input()
            elif frame.channel == wsframes.RESIZE:
                size = wsframes.resize(frame.data)
                if size is not None:
                    session.resized(*size)
        return ([data[:used]] if used else []), used

    def to_user(data: memoryview) -> tuple[list[memoryview], int]:
        if io.stopped:
            return [], len(data)
        found, used = to_user_frames.feed(data)
        # Payloads are cut out only for a recorder or joiners to see.
        watched = session.observer is not None or session.party is not None
        for frame in found:
            if frame.channel in (wsframes.STDOUT, wsframes.STDERR):
                if watched:
                    session.output(frame.data)
            elif frame.channel == wsframes.STATUS and frame.fin:
                exit_code[0] = wsframes.exit_code(frame.data)
        return ([data[:used]] if used else []), used

    await splice(reader, writer, up_reader, up_writer, a_tap=from_user, b_tap=to_user)
    return exit_code[0]


async def relay_raw(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    client: LiveClient,
) -> None:
    await splice(reader, writer, up_reader, up_writer)
