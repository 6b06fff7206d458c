"""The node's raw session log: what a recorder writes while the session runs.

Encoding asciicast (UTF-8 decode, JSON escapes) costs milliseconds of CPU per MiB of
output, on the core that relays the session. So the session's data path only appends
the bytes it relayed, each read behind a small binary frame header, and the log becomes
asciicast v2 after the session, as it is uploaded (`CastConverter`):

    session (event loop)          node's disk                  upload (after the session)
    on_output ─ frame + bytes ─▶  <id>.cast: raw log  ─ read ─▶ FrameReader ─▶ CastConverter
    on_resize ─ frame ─────────▶                                 ─▶ asciicast v2 to auth

A raw log is

    b"certgate raw session log 1\\n"   MAGIC
    {"version": 2, ...}\\n             the asciicast header line, exactly as it will be sent
    frames, each FRAME (little endian, 13 bytes) then `length` bytes of payload:
        type    1 byte   b"o" output (payload: the bytes as read from the pty)
                         b"r" resize (payload: width, height as two uint32)
                         b"e" the session ended (no payload), the log's last frame
        time    float64  seconds since the session began (monotonic clock)
        length  uint32   payload bytes

Appends are whole frames, one write() per batch, so a crash or `kill -9` leaves a log
that ends at a frame boundary, or (on a torn write) with one cut-off frame that the
reader drops. A log without the end frame (cut off, or written before there was one)
becomes a recording that ends at its last output. Files without MAGIC are older
nodes' asciicast files, sent as they are.

Everything here but `RawLogFile` is pure: no I/O, no clock.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple

from certgate.errors import BadParameter
from certgate.recording.asciicast import (
    END_LABEL,
    MARKER,
    OUTPUT,
    RESIZE,
    CastEncoder,
    CastReader,
    Header,
)

MAGIC = b"certgate raw session log 1\n"
FRAME = struct.Struct("<cdI")
SIZE = struct.Struct("<II")
OUTPUT_TYPE = b"o"
RESIZE_TYPE = b"r"
END_TYPE = b"e"

# Output frames closer together than this become one asciicast event...
COALESCE_SECONDS = 0.01
# ...of at most about this many bytes (one 64 KiB pty read may go past it), which keeps
# a `cat` of a big file from being one JSON line per 4 KiB read, or one huge line.
MAX_EVENT_BYTES = 64 * 1024
# Buffers one writev() takes (Linux's IOV_MAX).
IOV_MAX = 1024
# The longest header line a reader accepts.
MAX_HEADER_BYTES = 1 << 20


def preamble(header: Header) -> bytes:
    """The start of a raw log: MAGIC, then the asciicast header line."""
    return MAGIC + header.to_line()


def resize_frame(time: float, width: int, height: int) -> bytes:
    return FRAME.pack(RESIZE_TYPE, time, SIZE.size) + SIZE.pack(width, height)


def end_frame(time: float) -> bytes:
    return FRAME.pack(END_TYPE, time, 0)


# The recorder packs output frames inline (`FRAME.pack(OUTPUT_TYPE, time, len(data))`
# then the data): it is the one call per pty read.


class Frame(NamedTuple):
    type: bytes  # OUTPUT_TYPE, RESIZE_TYPE or END_TYPE
    time: float
    payload: bytes


def read_preamble(file: IO[bytes]) -> bytes | None:
    """The header line of the raw log in `file`, read from its start; None if the file
    is not a raw log (an asciicast file of an older node). BadParameter if it is one
    whose header cannot be read (cut off before it was written)."""
    start = file.read(len(MAGIC))
    if start != MAGIC:
        if MAGIC.startswith(start):  # empty, or cut off inside MAGIC: created, then killed
            raise BadParameter("the session log ends inside its header (cut off at creation?)")
        file.seek(0)
        return None
    line = file.readline(MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise BadParameter("the session log ends inside its header (cut off at creation?)")
    CastReader([line])  # BadParameter if it is not an asciicast v2 header
    return line


class FrameReader:
    """Frames out of a raw log's bytes (after the preamble), fed in pieces of any size.

    What is left at the end without a whole frame is `pending` bytes: a write cut off
    by a crash. A frame that cannot be one (unknown type, a resize that is not two
    sizes, an end with a payload) stops the reader; `damage` says where, and nothing
    after it is trusted.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0  # of the buffer's start, in the frames' bytes
        self.damage: str | None = None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self.damage is not None:
            return []
        buffer = self._buffer + data if self._buffer else data
        frames: list[Frame] = []
        at, end = 0, len(buffer)
        while end - at >= FRAME.size:
            kind, time, length = FRAME.unpack_from(buffer, at)
            if (
                kind not in (OUTPUT_TYPE, RESIZE_TYPE, END_TYPE)
                or (kind == RESIZE_TYPE and length != SIZE.size)
                or (kind == END_TYPE and length != 0)
                or not time >= 0  # also NaN
            ):
                self.damage = f"bad frame at byte {self._offset + at} of the session frames"
                break
            stop = at + FRAME.size + length
            if stop > end:
                break
            frames.append(Frame(kind, time, buffer[at + FRAME.size : stop]))
            at = stop
        self._buffer = buffer[at:]
        self._offset += at
        return frames


class CastConverter:
    """A raw log's frames in, asciicast v2 event lines out (after the log's header line).

    One converter per recording, fed its bytes in order: it keeps the frame reader's
    leftover, the UTF-8 decoder's state (`CastEncoder`) and the output event it is
    still adding frames to.
    """

    def __init__(self) -> None:
        self.frames = FrameReader()
        self._encoder = CastEncoder()
        self._chunks: list[bytes] = []  # of the output event being built
        self._size = 0
        self._start = 0.0
        self._last_time = 0.0

    def feed(self, data: bytes) -> bytes:
        lines: list[bytes] = []
        for kind, time, payload in self.frames.feed(data):
            self._last_time = max(self._last_time, time)
            if kind == OUTPUT_TYPE:
                if self._chunks and (
                    time - self._start >= COALESCE_SECONDS or self._size >= MAX_EVENT_BYTES
                ):
                    lines.append(self._event())
                if not self._chunks:
                    self._start = time
                self._chunks.append(payload)
                self._size += len(payload)
            else:
                if self._chunks:
                    lines.append(self._event())
                if kind == RESIZE_TYPE:
                    lines.append(self._encoder.encode([(time, RESIZE, SIZE.unpack(payload))]))
                else:  # END_TYPE: a split character left at the end goes before it
                    lines.append(self._encoder.finish(time))
                    lines.append(self._encoder.encode([(time, MARKER, END_LABEL)]))
        return b"".join(lines)

    def finish(self) -> bytes:
        """The event still being built, and a split character left at the end (U+FFFD).
        What a crash cut off (`frames.pending`) is dropped."""
        tail = self._event() if self._chunks else b""
        return tail + self._encoder.finish(self._last_time)

    def _event(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks, self._size = [], 0
        return self._encoder.encode([(self._start, OUTPUT, data)])


def to_asciicast(data: bytes) -> tuple[bytes, CastConverter]:
    """A whole raw log as asciicast v2, and its converter (what was cut off or damaged:
    `.frames`). BadParameter if `data` is not a raw log with a header."""
    file = io.BytesIO(data)
    header = read_preamble(file)
    if header is None:
        raise BadParameter("not a certgate session log")
    converter = CastConverter()
    body = converter.feed(file.read())
    return header + body + converter.finish(), converter


class RawLogFile:
    """A raw log being written: created with its preamble, then appended to.

    Every `append` is one writev() of whole frames on an O_APPEND descriptor (more
    only past IOV_MAX buffers, or if the kernel takes part of it), so what was appended
    before a crash is on disk as whole frames, but for a torn last write. Writes go to
    the page cache; no fsync per batch.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path
        self.size = 0

    @classmethod
    def create(cls, path: Path, header: Header) -> RawLogFile:
        """Create `path` (never an existing file) and write the preamble: OSError if not."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        log = cls(os.open(path, flags, 0o600), path)
        try:
            log.append([preamble(header)])
        except OSError:
            log.close()
            raise
        return log

    def append(self, chunks: Sequence[bytes]) -> None:
        """Write `chunks` (whole frames) as one: writev(), IOV_MAX buffers at a time, so
        the recorder never copies a session's output into a bigger buffer first."""
        if self._fd is None:
            raise OSError("the session log is closed")
        for start in range(0, len(chunks), IOV_MAX):
            batch = chunks[start : start + IOV_MAX]
            written = os.writev(self._fd, batch)
            size = sum(map(len, batch))
            if written < size:  # the kernel took part of it (rare): write the rest
                view = memoryview(b"".join(batch))[written:]
                while view:
                    view = view[os.write(self._fd, view) :]
            self.size += size

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
