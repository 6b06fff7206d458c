"""Node side: send finished recordings to auth, delete them only once auth has them.

    session ends ──▶ <dir>/ended/<id>.cast ──ended(id, complete)──▶ queue ──▶ PUT to auth
                                           (AFTER_END_DELAY later)    ▲   (a raw session
    node starts  ──▶ scan: ended/<id>.cast (complete),                │    log is sent as
                           <id>.cast (cut off: incomplete) ──submit───┘    asciicast v2:
                                                                           cast_chunks)
                     stored ──▶ unlink the file
                     refused as malformed, or its id taken ──▶ <dir>/rejected/
                     any other error ──▶ retry later (backoff and jitter)

Nothing is deleted before auth answered that it stored the recording, so a crash or
`kill -9` at any point loses at most what the session had not yet written: the next
start finds the file and sends it, marked incomplete if the session never ended. A
recording over MAX_RECORDING_BYTES as asciicast (a session that printed gigabytes) is
sent up to its last whole event within that, marked truncated, and then kept whole in
<dir>/rejected/ rather than deleted: auth refuses larger ones, and what a session did
after its first gigabytes is evidence too.
Auth takes a recording only from the host that announced its session (auth/
session_hosts.py): the recording hook announces each one as it opens it, and `start`
announces again what an earlier run left (`announce`), before queuing it: a recording
made before the host announced recordings, or one whose announcement auth forgot (a
year on), is then uploaded too.
Uploads go one at a time, streamed from the file. A raw session log (rawlog.py)
becomes asciicast v2 as it is read, a chunk at a time on the event loop between other
work (not in a thread: see recorder.py on the GIL); a log cut off by a crash ends at its
last whole frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

from certgate.api.recording import MAX_RECORDING_BYTES, is_recording_id
from certgate.errors import AlreadyExists, BadParameter, CertgateError, from_json
from certgate.recording.asciicast import CastReader, Header
from certgate.recording.rawlog import MAX_HEADER_BYTES, CastConverter, read_preamble
from certgate.recording.recorder import RecordingDirectory
from certgate.rpc.auth_client import AsyncAuthClient

log = logging.getLogger("certgate.recording")

RETRY_MIN = 1.0
RETRY_MAX = 60.0
CHUNK = 256 * 1024
# A session's last output may still be on its way to the user when the node sees the
# session end (channel windows and socket buffers hold megabytes, and in a one-process
# cluster the proxy relays it on this same event loop). Its upload waits this long so
# as not to slow that down (measured: bench/recording_overhead.py).
AFTER_END_DELAY = 1.0

# At most this many bytes of asciicast per byte of session log (a control character is
# written \u00XX), with room to spare: a log this many times smaller than the limit is
# sent without reading it through first.
MAX_EXPANSION = 8

# (session id, the recording as asciicast v2 bytes, incomplete, truncated) -> returns
# once auth has stored it; raises otherwise. The bytes can be iterated once.
Send = Callable[[str, AsyncIterable[bytes], bool, bool], Awaitable[None]]
# Tells auth that this host recorded the session of this header (the recording hook's).
Announce = Callable[[Header], None]


class RecordingUploader:
    def __init__(
        self,
        directory: RecordingDirectory,
        send: Send,
        *,
        retry_min: float = RETRY_MIN,
        retry_max: float = RETRY_MAX,
        after_end: float = AFTER_END_DELAY,
        max_bytes: int = MAX_RECORDING_BYTES,
        announce: Announce | None = None,
    ) -> None:
        self._directory = directory
        self._send = send
        self._announce = announce
        self._max_bytes = max_bytes
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._after_end = after_end
        self._queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._queued: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._delays: dict[str, float] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._ending: dict[str, tuple[asyncio.TimerHandle, bool]] = {}  # ended(): waiting
        self.uploaded = 0  # for tests and metrics

    async def start(self) -> int:
        """Queue what a previous run left behind, then start sending; returns that count.

        Call before any session starts: every file in the live directory then belongs
        to a session that was cut off.
        """
        self._directory.create()
        found = self._leftovers()
        if self._announce is not None:
            headers = await asyncio.to_thread(lambda: [_header_of(path) for path, _ in found])
            for header in headers:
                if header is not None:
                    self._announce(header)
        leftovers = 0
        for path, complete in found:
            self.submit(path.stem, complete)
            leftovers += 1
        if leftovers:
            log.info("%d recording(s) from an earlier run queued for upload", leftovers)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="recording-uploads")
            self._task.add_done_callback(_log_crash)
        return leftovers

    def _leftovers(self) -> list[tuple[Path, bool]]:
        found: list[tuple[Path, bool]] = []
        for folder, complete in ((self._directory.ended, True), (self._directory.path, False)):
            for path in sorted(folder.glob("*.cast")):
                if is_recording_id(path.stem):
                    found.append((path, complete))
                else:
                    log.warning("ignoring %s: not named after a session id", path)
        return found

    def submit(self, session_id: str, complete: bool) -> None:
        """Queue a recording whose session ended (on the event loop)."""
        if session_id in self._queued:
            return
        self._queued.add(session_id)
        self._queue.put_nowait((session_id, complete))

    def ended(self, session_id: str, complete: bool) -> None:
        """Queue the recording of a session that just ended, AFTER_END_DELAY from now."""
        if self._after_end <= 0:
            self.submit(session_id, complete)
            return
        handle = asyncio.get_running_loop().call_later(
            self._after_end, self._ending_done, session_id
        )
        self._ending[session_id] = (handle, complete)

    def _ending_done(self, session_id: str) -> None:
        handle, complete = self._ending.pop(session_id)
        handle.cancel()  # when called by close(), before its time
        self.submit(session_id, complete)

    def pending(self) -> int:
        """Recordings waiting after their session's end, queued, being sent or waiting
        to be retried."""
        return len(self._ending) + len(self._queued) + len(self._retries)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or being sent; False if `timeout` passed first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()
                return True
        return False

    async def close(self, timeout: float = 5.0) -> None:
        """Give queued uploads `timeout` seconds, then stop; the rest go at next start."""
        if self._task is None:
            return
        for session_id in list(self._ending):
            self._ending_done(session_id)  # no session is left to slow down
        task, self._task = self._task, None
        try:
            await self.wait_idle(timeout)
        finally:
            # Also when this close is itself cancelled (a shutdown step ran out of time):
            # what is not sent stays on disk for the next start.
            for handle in self._retries.values():
                handle.cancel()
            self._retries.clear()
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            session_id, complete = await self._queue.get()
            try:
                await self._upload(session_id, complete)
            except Exception:
                # Whatever one recording runs into must not stop the uploads behind it:
                # its file stays where it is, and the next start sends it again.
                log.exception("upload of recording %s failed", session_id)
            finally:
                self._queued.discard(session_id)
                self._queue.task_done()

    async def _upload(self, session_id: str, complete: bool) -> None:
        path = (
            self._directory.finished(session_id) if complete else self._directory.live(session_id)
        )
        if not path.exists():
            log.warning("recording %s vanished before it was uploaded", session_id)
            return
        chunks = cast_chunks(path, limit=self._max_bytes)
        try:
            truncated = await _over(path, self._max_bytes)
            # The header first: a log cut off before it was written is refused here.
            first = await anext(chunks, b"")
            await self._send(session_id, _prepend(first, chunks), not complete, truncated)
        except (BadParameter, AlreadyExists) as exc:
            # Auth will never take this file as it is (malformed, or its id holds another
            # recording: write-once): keep it aside for an operator rather than retrying
            # forever or deleting it.
            kept = self._keep(path)
            log.error("auth refused recording %s (%s); kept in %s", session_id, exc, kept)
            return
        except (CertgateError, OSError) as exc:
            # Retried later, without holding up the recordings queued behind it.
            delay = self._delays.get(session_id, self._retry_min)
            self._delays[session_id] = min(delay * 2, self._retry_max)
            wait = delay * (0.5 + random.random())
            log.warning(
                "upload of recording %s failed (%s); retrying in %.1fs", session_id, exc, wait
            )
            self._retries[session_id] = asyncio.get_running_loop().call_later(
                wait, self._retry, session_id, complete
            )
            return
        finally:
            await chunks.aclose()
        self._delays.pop(session_id, None)
        self.uploaded += 1
        if truncated:
            kept = self._keep(path)
            log.error(
                "recording %s is over %d bytes as asciicast: auth has its start (marked "
                "truncated); the whole session log is kept in %s",
                session_id, self._max_bytes, kept,
            )  # fmt: skip
            return
        path.unlink(missing_ok=True)
        log.info("recording %s uploaded%s", session_id, "" if complete else " (incomplete)")

    def _keep(self, path: Path) -> Path:
        """Move a recording aside for an operator (<dir>/rejected/); where it is now. If
        it cannot be moved it stays (and is sent again at the next start): an error here
        must not stop the uploads queued behind it."""
        kept = self._directory.path / "rejected" / path.name
        try:
            kept.parent.mkdir(exist_ok=True)
            path.replace(kept)
        except OSError as exc:
            log.error("cannot move recording %s to %s: %s", path.stem, kept.parent, exc)
            return path
        return kept

    def _retry(self, session_id: str, complete: bool) -> None:
        self._retries.pop(session_id, None)
        self.submit(session_id, complete)


async def cast_chunks(
    path: Path, size: int = CHUNK, limit: int | None = None
) -> AsyncGenerator[bytes, None]:
    """The recording at `path` as asciicast v2, the header line first, then chunks;
    with `limit`, only up to the last whole line within that many bytes.

    A raw session log is converted as it is read; anything else (a node's file from
    before raw logs) is asciicast already and comes as it is. BadParameter at the first
    chunk if a raw log has no readable header.
    """
    left = limit
    async for chunk in _cast_chunks(path, size):
        if left is not None and len(chunk) > left:
            if end := chunk.rfind(b"\n", 0, left) + 1:
                yield chunk[:end]
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


async def _over(path: Path, limit: int) -> bool:
    """Whether the recording at `path` is over `limit` bytes as asciicast: read through
    only when its size on disk says it may be."""
    if path.stat().st_size * MAX_EXPANSION <= limit:
        return False
    total = 0
    chunks = _cast_chunks(path)
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                return True
    finally:
        await chunks.aclose()
    return False


async def _cast_chunks(path: Path, size: int = CHUNK) -> AsyncGenerator[bytes, None]:
    with path.open("rb") as file:
        # The header and the first chunk in one trip to a thread, and no trip for the
        # empty read at the end: a file that gives less than asked is at its end (the
        # session is over, nothing writes to it). A short session is then one trip.
        header, data = await asyncio.to_thread(_read_start, file, size)
        if header is None:
            while data:
                yield data
                data = b"" if len(data) < size else await asyncio.to_thread(file.read, size)
            return
        yield header
        converter = CastConverter()
        while data:
            if events := converter.feed(data):
                yield events
            if converter.frames.damage is not None or len(data) < size:
                break
            data = await asyncio.to_thread(file.read, size)
        if tail := converter.finish():
            yield tail
        _log_losses(path, converter)


def _header_of(path: Path) -> Header | None:
    """The header of the recording at `path`; None if it has none that can be read (its
    upload will say so)."""
    try:
        with path.open("rb") as file:
            line = read_preamble(file) or file.readline(MAX_HEADER_BYTES)
        return CastReader([line]).header
    except (BadParameter, OSError):
        return None


def _read_start(file: IO[bytes], size: int) -> tuple[bytes | None, bytes]:
    """(the raw log's header line or None, up to `size` bytes after it)."""
    header = read_preamble(file)
    return header, file.read(size)


def _log_losses(path: Path, converter: CastConverter) -> None:
    if converter.frames.damage is not None:
        log.error("recording %s is sent up to its damage: %s", path.stem, converter.frames.damage)
    elif converter.frames.pending:
        # A write cut off by a crash: the session was not ended, the file is incomplete.
        log.info(
            "recording %s: %d bytes of a cut-off write dropped", path.stem, converter.frames.pending
        )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("recording uploader stopped", exc_info=task.exception())


def auth_sender(auth: AsyncAuthClient) -> Send:
    """A `Send` that streams the file to auth's `PUT /v1/recordings/{id}`."""

    async def send(
        session_id: str, chunks: AsyncIterable[bytes], incomplete: bool, truncated: bool
    ) -> None:
        flags = {"incomplete": incomplete, "truncated": truncated}
        response = await auth.raw(
            "PUT",
            f"/v1/recordings/{session_id}",
            params={name: "1" for name, on in flags.items() if on} or None,
            headers={"Content-Type": "application/x-asciicast"},
            content=chunks,
        )
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise from_json(response.status_code, body)

    return send
