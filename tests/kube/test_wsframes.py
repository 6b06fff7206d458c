"""kube/wsframes.py: channel frames read in passing, split anywhere."""

from __future__ import annotations

import os
import struct

from hypothesis import given
from hypothesis import strategies as st

from certgate.kube import wsframes


def client_frame(payload: bytes, opcode: int = wsframes.OP_BINARY, fin: bool = True) -> bytes:
    """A masked frame, as kubectl sends it."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask + masked


@given(
    st.lists(st.tuples(st.sampled_from([0, 1, 2, 4]), st.binary(max_size=70000)), max_size=4),
    st.integers(min_value=1, max_value=5000),
)
def test_frames_come_out_whole_however_the_bytes_are_split(
    messages: list[tuple[int, bytes]], step: int
) -> None:
    stream = b"".join(client_frame(bytes([ch]) + data) for ch, data in messages)
    stream += b"".join(wsframes.channel_frame(ch, data) for ch, data in messages)
    reader = wsframes.FrameReader()
    frames = []
    raw = b""
    held = b""  # what the reader is not done with comes back with the next piece
    for i in range(0, len(stream), step):
        data = held + stream[i : i + step]
        found, used = reader.feed(data)
        frames += [(f.channel, f.data) for f in found]
        raw += b"".join(f.raw for f in found)
        assert sum(len(f.raw) for f in found) == used  # whole frames, nothing between
        held = data[used:]
    assert frames == messages + messages
    assert raw == stream and held == b""


def test_continuations_keep_the_first_frames_channel() -> None:
    stream = client_frame(b"\x01abc", fin=False) + client_frame(b"def", wsframes.OP_CONT)
    frames, used = wsframes.FrameReader().feed(stream)
    assert used == len(stream)
    assert [(f.channel, f.data) for f in frames] == [(1, b"abc"), (1, b"def")]


def test_status_and_resize_are_read() -> None:
    failure = (
        b'{"status":"Failure","reason":"NonZeroExitCode",'
        b'"details":{"causes":[{"reason":"ExitCode","message":"3"}]}}'
    )
    assert wsframes.exit_code(failure) == 3
    assert wsframes.exit_code(b'{"metadata":{},"status":"Success"}') == 0
    assert wsframes.exit_code(b"not json") is None
    assert wsframes.resize(b'{"Width":100,"Height":30}') == (100, 30)
    assert wsframes.resize(b"{}") is None
