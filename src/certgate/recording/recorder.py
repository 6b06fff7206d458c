"""Recording sessions on a node: an observer per session, one writer thread per node.

    session data path (event loop)                      writer thread (one per node)
    ──────────────────────────────                      ────────────────────────────
    on_output(bytes) ─ append to pending ─┐
    on_resize(w, h)  ─ append to pending ─┤ every 50 ms or 64 KiB:
                                          └─ CastEncoder.encode ─ submit(lines) ─▶
                                                                   CastFile.append
                                                                   (one write)
    on_end()  ─ encode the rest ─ submit(finish) ─────────────────▶ close; move to ended/
                                 ◀─ call_soon_threadsafe(on_ended(id, ok))

The observer's calls only append to a list and arm a timer. A batch is encoded (UTF-8
decode, JSON) on the loop, 64 KiB at a time, and only the write() goes to the writer
thread, in order, so a slow disk never stalls a session's relay. The CPU work stays on
the loop on purpose: a CPU-bound second thread would hold the GIL for up to the switch
interval every time the loop releases it for a socket call, slowing every session far
more than the encoding costs (measured: bench/recording_overhead.py). Consecutive output
within 10 ms is one event, which keeps a `cat` of a big file from becoming one JSON
line per 4 KiB pty read.

A write that fails stops the recording and calls `on_failure` on the loop: the node
ends the session when the roles say `record_session: strict`, and carries on
(recording marked incomplete) when they say `best_effort`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from certgate.api.recording import check_recording_id
from certgate.recording.asciicast import OUTPUT, RESIZE, CastEncoder, CastFile, Header

log = logging.getLogger("certgate.recording")

# Output is handed to the writer at least this often...
FLUSH_INTERVAL = 0.05
# ...or as soon as this much is pending.
FLUSH_BYTES = 64 * 1024
# Output chunks closer together than this are one event.
COALESCE_SECONDS = 0.01

FailureCallback = Callable[[str, str], None]  # (session id, message)
EndedCallback = Callable[[str, bool], None]  # (session id, complete)


class RecordingWriter:
    """The node's one writer thread: runs recording work in the order it was given."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certgate-recorder")
        self._last: Future[None] | None = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        future = self._executor.submit(fn, *args)
        future.add_done_callback(_log_failure)
        self._last = future

    async def drain(self) -> None:
        """Wait until everything submitted so far is done."""
        if self._last is not None:
            await asyncio.wrap_future(self._last)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("recording writer task failed", exc_info=future.exception())


class RecordingDirectory:
    """Where a node keeps recordings until auth has them.

    <dir>/<id>.cast          being written (or cut off by a crash: incomplete)
    <dir>/ended/<id>.cast    the session ended and the file is whole
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ended = path / "ended"

    def create(self) -> None:
        self.ended.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def live(self, session_id: str) -> Path:
        return self.path / f"{check_recording_id(session_id)}.cast"

    def finished(self, session_id: str) -> Path:
        return self.ended / f"{check_recording_id(session_id)}.cast"


class SessionRecorder:
    """The SessionObserver that records one session (see the module docstring)."""

    def __init__(
        self,
        cast: CastFile,
        header: Header,
        directory: RecordingDirectory,
        writer: RecordingWriter,
        *,
        on_ended: EndedCallback,
        on_failure: FailureCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = header.session_id
        self._cast = cast
        self._directory = directory
        self._writer = writer
        self._on_ended = on_ended
        self._on_failure = on_failure
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._encoder = CastEncoder()
        self._start = clock()
        self._last_time = 0.0
        self._pending: list[list[Any]] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False
        # Set on the loop when a write failed; the writer thread checks its own flag.
        self.failed: str | None = None
        self._write_failed = False

    @classmethod
    def open(
        cls,
        header: Header,
        directory: RecordingDirectory,
        writer: RecordingWriter,
        *,
        on_ended: EndedCallback,
        on_failure: FailureCallback | None = None,
    ) -> SessionRecorder:
        """Create the session's file with its header now: OSError if it cannot be."""
        cast = CastFile.create(directory.live(header.session_id), header)
        return cls(cast, header, directory, writer, on_ended=on_ended, on_failure=on_failure)

    # ---- SessionObserver (event loop, data path) -----------------------------------

    def on_output(self, data: bytes) -> None:
        if self._ended or self.failed is not None:
            return
        now = self._clock() - self._start
        pending = self._pending
        if pending and pending[-1][1] == OUTPUT and now - pending[-1][0] < COALESCE_SECONDS:
            pending[-1][2] += data
        else:
            pending.append([now, OUTPUT, bytearray(data)])
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._flush)

    def on_resize(self, width: int, height: int) -> None:
        if self._ended or self.failed is not None:
            return
        self._pending.append([self._clock() - self._start, RESIZE, (width, height)])
        if self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._flush)

    def on_end(self) -> None:
        if self._ended:
            return
        self._flush()
        self._ended = True
        tail = b"" if self.failed else self._encoder.finish(self._clock() - self._start)
        self._writer.submit(self._finish, tail)

    # ---- hand-off ------------------------------------------------------------------

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self.failed is not None:
            self._pending, self._pending_bytes = [], 0
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._writer.submit(self._write, self._encoder.encode([(t, k, p) for t, k, p in batch]))

    # ---- writer thread -------------------------------------------------------------

    def _write(self, lines: bytes) -> None:
        if self._write_failed:
            return
        try:
            self._cast.append(lines)
        except OSError as exc:
            self._fail(exc)

    def _finish(self, tail: bytes) -> None:
        complete = not self._write_failed
        if complete and tail:
            try:
                self._cast.append(tail)
            except OSError as exc:
                self._fail(exc)
                complete = False
        with contextlib.suppress(OSError):
            self._cast.close()
        if complete:
            try:
                os.replace(self._cast.path, self._directory.finished(self.session_id))
            except OSError as exc:
                log.warning("recording %s stays in place: %s", self.session_id, exc)
                complete = False
        self._loop.call_soon_threadsafe(self._on_ended, self.session_id, complete)

    def _fail(self, exc: OSError) -> None:
        self._write_failed = True
        message = exc.strerror or str(exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._failed, message)

    def _failed(self, message: str) -> None:
        if self.failed is not None:
            return
        self.failed = message
        self._pending, self._pending_bytes = [], 0
        log.warning("recording of session %s failed: %s", self.session_id, message)
        if self._on_failure is not None:
            self._on_failure(self.session_id, message)
