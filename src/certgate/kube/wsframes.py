"""WebSocket frames of Kubernetes' channel protocols (v4/v5.channel.k8s.io), read in
passing: the kube service relays every frame as it came and reads a copy to record
stdout/stderr, see resizes and the exit status, and to stop at a frame boundary.

Each binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 status
(JSON), 4 resize (JSON `{"Width": W, "Height": H}`); v5 adds 255 + channel = close.
A message may be fragmented into continuation frames; they keep the first one's channel.

Sans-IO: `FrameReader.feed(bytes)` returns complete frames; nothing here touches a socket.
A frame's `raw` is a view of what was fed: valid only as long as that is.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from certgate.errors import BadParameter

STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
# A frame larger than this is refused (kubectl and the API server write far smaller).
MAX_FRAME = 16 * 1024 * 1024


@dataclass(frozen=True)
class Frame:
    raw: memoryview  # the frame as it came, to relay: a view, never a copy
    opcode: int
    fin: bool
    channel: int  # of the message this frame belongs to (-1 for control frames)
    # Where the payload starts in `raw` (past the channel byte when there is one), and
    # the client's mask; the payload is copied (and unmasked) only when someone reads
    # `data`: a relay that nobody records reads no payload at all.
    start: int = 0
    mask: bytes = b""
    mask_offset: int = 0

    @property
    def data(self) -> bytes:
        """The payload without the channel byte, unmasked."""
        payload = self.raw[self.start :]
        if not self.mask:
            return bytes(payload)
        return _unmask(payload, self.mask, self.mask_offset)


class FrameReader:
    """Complete frames out of a byte stream, without copying it.

    `feed(data)` returns the frames complete in `data`, as views of it, and how many
    bytes they take: the bytes after the last complete frame are not done with, and the
    caller hands them in again at the start of its next feed (a splice tap says so), so
    a relay always stops at a frame boundary (certgate can then put frames of its own
    into the stream). The continued message's channel is all that is kept between
    feeds."""

    def __init__(self) -> None:
        self._channel = -1  # of the message being continued

    def feed(self, data: bytes | memoryview) -> tuple[list[Frame], int]:
        frames: list[Frame] = []
        view = memoryview(data)
        at = 0
        while (found := self._next(data, view, at)) is not None:
            frame, at = found
            frames.append(frame)
        return frames, at

    def _next(self, buf: bytes | memoryview, view: memoryview, at: int) -> tuple[Frame, int] | None:
        header = _header(buf, at)
        if header is None:
            return None
        fin, opcode, mask, offset, length = header
        end = offset + length
        if len(buf) < end:
            return None
        raw = view[at:end]
        start = offset - at
        if opcode >= 8:
            return Frame(raw, opcode, fin, -1, start, mask), end
        skip = 0
        if opcode in (OP_TEXT, OP_BINARY):
            if length:
                first = buf[offset] ^ mask[0] if mask else buf[offset]
                self._channel = first
                skip = 1
            else:
                self._channel = -1
        channel = self._channel
        if fin:
            self._channel = -1
        return Frame(raw, opcode, fin, channel, start + skip, mask, skip), end


def _header(buf: bytes | memoryview, at: int) -> tuple[bool, int, bytes, int, int] | None:
    """(fin, opcode, mask, where the payload starts, its length) of the frame at `at`,
    None until its header is all there."""
    if len(buf) - at < 2:
        return None
    fin = bool(buf[at] & 0x80)
    opcode = buf[at] & 0x0F
    masked = bool(buf[at + 1] & 0x80)
    length = buf[at + 1] & 0x7F
    offset = at + 2
    if length == 126:
        if len(buf) < offset + 2:
            return None
        length = struct.unpack_from("!H", buf, offset)[0]
        offset += 2
    elif length == 127:
        if len(buf) < offset + 8:
            return None
        length = struct.unpack_from("!Q", buf, offset)[0]
        offset += 8
    if length > MAX_FRAME:
        raise BadParameter(f"websocket frame of {length} bytes refused")
    mask = b""
    if masked:
        if len(buf) < offset + 4:
            return None
        mask = bytes(buf[offset : offset + 4])
        offset += 4
    return fin, opcode, mask, offset, length


def _unmask(payload: bytes | memoryview, mask: bytes, offset: int = 0) -> bytes:
    """Unmask `payload`, which starts `offset` bytes into the masked payload."""
    if not payload:
        return b""
    mask = mask[offset % 4 :] + mask[: offset % 4]
    key = int.from_bytes((mask * (len(payload) // 4 + 1))[: len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(len(payload), "big")


def server_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """An unmasked frame, as a server sends it."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return head + payload


def channel_frame(channel: int, data: bytes) -> bytes:
    return server_frame(bytes([channel]) + data)


def close_frame(code: int = 1000) -> bytes:
    return server_frame(struct.pack("!H", code), OP_CLOSE)


def failure_status(message: str) -> bytes:
    status = {"metadata": {}, "status": "Failure", "message": message, "reason": "Forbidden"}
    return channel_frame(STATUS, json.dumps(status).encode())


def exit_code(status_json: bytes) -> int | None:
    """The exit code a status message reports (0 on Success), None if unreadable."""
    try:
        status = json.loads(status_json)
    except ValueError:
        return None
    if not isinstance(status, dict):
        return None
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", ""))
            except ValueError:
                return None
    return None


def resize(data: bytes) -> tuple[int, int] | None:
    try:
        size = json.loads(data)
        return int(size["Width"]), int(size["Height"])
    except (ValueError, KeyError, TypeError):
        return None
