"""events.log: the audit log's JSON-lines copy for log shippers.

The event store is the record; the file is a copy that must not miss what the store has.
An append the disk refuses (full, quota, file size limit) is kept in memory and written
before the next batch, and retried on a timer while nothing else comes, so an event
stored while the disk was full still reaches the file once it has room. The store
counts an event it already has as not new, so without this a retried event would
never reach the file.

Lines stay whole: a write the disk cut short mid-line is cut back to its last whole
line when nothing was appended after it (another auth worker), and the rest goes with
the retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from certgate.services.throttled_log import ThrottledWarning
from certgate.tasks import log_failure

log = logging.getLogger("certgate.audit")

# What the file may fall behind by before its oldest lines are given up (they stay in
# the store, and `cgctl audit ls` finds them).
MAX_BEHIND_BYTES = 64 * 1024 * 1024
RETRY_FIRST = 1.0
RETRY_MAX = 30.0


class AuditFile:
    def __init__(
        self, path: Path, *, retry_first: float = RETRY_FIRST, retry_max: float = RETRY_MAX
    ) -> None:
        self._path = path
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._behind = b""  # lines stored that the file has not taken yet, oldest first
        self._retry: asyncio.Task[None] | None = None
        self._warning = ThrottledWarning(log)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def behind(self) -> int:
        """Bytes stored but not yet in the file."""
        return len(self._behind)

    def append(self, text: str) -> OSError | None:
        """Append `text` (whole lines) after whatever the file is behind by; the error
        that kept some of it out, which is then kept and retried."""
        data = self._behind + text.encode()
        if not data:
            return None
        try:
            written = _append_whole_lines(self._path, data)
        except _Cut as cut:
            self._behind = data[cut.written :]
            self._keep_within_bounds()
            self._warning.warn(
                f"audit: {self._path} cannot take {len(self._behind)} bytes of events"
                f" ({cut.error.strerror}); they are stored, and go to the file once it"
                " has room"
            )
            self._schedule_retry()
            return cut.error
        assert written == len(data)
        if self._behind:
            log.warning("audit: %s has taken the events it was behind by", self._path)
        self._behind = b""
        return None

    async def close(self) -> None:
        """Stop retrying; one last try for what the file is behind by."""
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
            self._retry = None
        if self._behind and self.append("") is not None:
            log.error(
                "audit: %d bytes of events never reached %s (they are in the event store)",
                len(self._behind),
                self._path,
            )

    def _keep_within_bounds(self) -> None:
        excess = len(self._behind) - MAX_BEHIND_BYTES
        if excess <= 0:
            return
        # Whole lines only: the data always ends with one.
        cut = self._behind.index(b"\n", excess - 1) + 1
        dropped = self._behind[:cut].count(b"\n")
        self._behind = self._behind[cut:]
        log.error(
            "audit: %s is over %d MiB behind; %d events left out of it (they are in the"
            " event store)",
            self._path,
            MAX_BEHIND_BYTES // (1024 * 1024),
            dropped,
        )

    def _schedule_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(
                self._retry_until_written(), name="certgate-audit-file"
            )
            self._retry.add_done_callback(log_failure(log, "audit file retry"))

    async def _retry_until_written(self) -> None:
        delay = self._retry_first
        while self._behind:
            await asyncio.sleep(delay)
            self.append("")
            delay = min(delay * 2, self._retry_max)


class _Cut(Exception):
    def __init__(self, written: int, error: OSError) -> None:
        self.written = written
        self.error = error


def _append_whole_lines(path: Path, data: bytes) -> int:
    """Write `data` with O_APPEND; _Cut with how much of it is in the file if the
    disk refused the rest.

    One write() for the lot when the disk takes it: lines from several processes (auth
    workers) never interleave within a batch. 0600: the lines name users, client
    addresses and command lines.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise _Cut(0, exc) from None
    written = 0
    try:
        while written < len(data):
            try:
                written += os.write(fd, data[written:])
            except OSError as exc:
                raise _Cut(_back_to_a_whole_line(fd, data, written), exc) from None
    finally:
        os.close(fd)
    return written


def _back_to_a_whole_line(fd: int, data: bytes, written: int) -> int:
    """After a write cut short: cut the file back to the end of the last whole line of
    `data` it took, if nothing was appended after it, and say how much of `data` the
    file then holds."""
    whole = data.rfind(b"\n", 0, written) + 1
    if whole == written:
        return written
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: just after what this write took
        if os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - (written - whole))
            return whole
    except OSError:
        pass
    # Another writer appended since: finish the line rather than cut theirs.
    return written
