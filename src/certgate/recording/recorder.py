"""Recording sessions on a node: an observer per session, one writer thread per node.

    session data path (event loop)                      writer thread (one per node)
    ──────────────────────────────                      ────────────────────────────
    on_output(bytes) ─ frame, bytes ──┐
    on_resize(w, h)  ─ frame ─────────┤ every 50 ms or 256 KiB:
                     (to a list)      └─ submit(frames) ───────▶ RawLogFile.append
                                                                 (one writev)
    on_end()  ─ end frame, submit(finish) ─────────────────────▶ close; move to ended/
                                 ◀─ call_soon_threadsafe(on_ended(id, ok))

The observer's calls only append a 13-byte frame header and the bytes object itself to
a list (no copy) and arm a timer: under half a millisecond of loop CPU per MiB of
output, where the relay itself takes 25-30. The session's log is raw (rawlog.py) and
becomes asciicast v2 after the session, as the uploader sends it: decoding UTF-8 and
escaping JSON here cost about 2 ms per MiB, and copying output into one growing
bytearray about 1 (measured: bench/recording_overhead.py, which also times the
recorder alone). Only the writev() goes to the writer thread, in order, so a slow disk
never stalls a session's relay; no CPU-bound work goes there, because a busy second
thread holds the GIL for up to the switch interval every time the loop releases it for
a socket call.

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
from certgate.recording.asciicast import Header
from certgate.recording.rawlog import (
    FRAME,
    IOV_MAX,
    OUTPUT_TYPE,
    RawLogFile,
    end_frame,
    resize_frame,
)
from certgate.tasks import log_failure

log = logging.getLogger("certgate.recording")

# Output is handed to the writer at least this often...
FLUSH_INTERVAL = 0.05
# ...or as soon as this much is pending: fewer hand-offs to the writer thread cost the
# relay less (each one passes the GIL back and forth), 256 KiB a session is little.
FLUSH_BYTES = 256 * 1024

FailureCallback = Callable[[str, str], None]  # (session id, message)
EndedCallback = Callable[[str, bool], None]  # (session id, complete)


class RecordingWriter:
    """The node's one writer thread: runs recording work in the order it was given."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certgate-recorder")
        self._last: Future[None] | None = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        future = self._executor.submit(fn, *args)
        future.add_done_callback(log_failure(log, "recording writer task"))
        self._last = future

    async def drain(self) -> None:
        """Wait until everything submitted so far is done."""
        if self._last is not None:
            await asyncio.wrap_future(self._last)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class RecordingDirectory:
    """Where a node keeps recordings until auth has them.

        <dir>/<id>.cast          being written (or cut off by a crash: incomplete)
        <dir>/ended/<id>.cast    the session ended and the file is whole

    Both are raw session logs (rawlog.py), turned into asciicast v2 as they are uploaded;
    they keep the recordings' `.cast` name (a file from before raw logs is asciicast, and
    is sent as it is).
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
        log_file: RawLogFile,
        header: Header,
        directory: RecordingDirectory,
        writer: RecordingWriter,
        *,
        on_ended: EndedCallback,
        on_failure: FailureCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = header.session_id
        self._file = log_file
        self._directory = directory
        self._writer = writer
        self._on_ended = on_ended
        self._on_failure = on_failure
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._start = clock()
        # Frame headers and the output itself, not yet handed to the writer: a list, not
        # a bytearray, so the data path never copies output (writev() takes the list).
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False
        # True once the session ended or the recording failed: nothing more is taken.
        self._stopped = False
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
        """Create the session's log with its header now: OSError if it cannot be."""
        log_file = RawLogFile.create(directory.live(header.session_id), header)
        return cls(log_file, header, directory, writer, on_ended=on_ended, on_failure=on_failure)

    # ---- SessionObserver (event loop, data path) -----------------------------------

    def on_output(self, data: bytes) -> None:
        if self._stopped:
            return
        if type(data) is not bytes:  # kept until written: it must not change meanwhile
            data = bytes(data)
        pending = self._pending
        pending.append(_pack_frame(OUTPUT_TYPE, self._clock() - self._start, len(data)))
        pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES or len(pending) >= IOV_MAX:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._flush)

    def on_resize(self, width: int, height: int) -> None:
        if self._stopped:
            return
        self._pending.append(resize_frame(self._clock() - self._start, width, height))
        if self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._flush)

    def on_end(self) -> None:
        if self._ended:
            return
        if not self._stopped:
            # When the session ended, which its last output may be long before: the
            # recording's duration is then the session's (asciicast.py).
            self._pending.append(end_frame(self._clock() - self._start))
        # The last frames and the close in one hand-off to the writer (one thread switch
        # per ended session, not two).
        batch = self._take()
        self._ended = True
        self._stopped = True
        self._writer.submit(self._finish, batch)

    # ---- hand-off ------------------------------------------------------------------

    def _flush(self) -> None:
        batch = self._take()
        if batch:
            self._writer.submit(self._write, batch)

    def _take(self) -> list[bytes]:
        """What is pending for the writer (nothing once stopped); the timer is off."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self._stopped:
            return []
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        return batch

    # ---- writer thread -------------------------------------------------------------

    def _write(self, frames: list[bytes]) -> None:
        if self._write_failed:
            return
        try:
            self._file.append(frames)
        except OSError as exc:
            self._fail(exc)

    def _finish(self, frames: list[bytes]) -> None:
        if frames:
            self._write(frames)
        complete = not self._write_failed
        with contextlib.suppress(OSError):
            self._file.close()
        if complete:
            try:
                os.replace(self._file.path, self._directory.finished(self.session_id))
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
        self._stopped = True
        self._pending, self._pending_bytes = [], 0
        log.warning("recording of session %s failed: %s", self.session_id, message)
        if self._on_failure is not None:
            self._on_failure(self.session_id, message)


_pack_frame = FRAME.pack
