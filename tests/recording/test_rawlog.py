"""The node's raw session log: what a recorder appends, and the asciicast v2 it becomes
(the same file a node wrote before raw logs), whole or cut off by a crash."""

from __future__ import annotations

import itertools
import json
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.errors import BadParameter
from certgate.recording.asciicast import END_LABEL, CastEncoder, CastReader, Event, Header
from certgate.recording.rawlog import (
    COALESCE_SECONDS,
    END_TYPE,
    FRAME,
    IOV_MAX,
    MAX_EVENT_BYTES,
    OUTPUT_TYPE,
    CastConverter,
    RawLogFile,
    end_frame,
    preamble,
    resize_frame,
    to_asciicast,
)
from certgate.recording.uploader import cast_chunks

HEADER = Header(
    width=100,
    height=30,
    timestamp=1_900_000_000.25,
    session_id=str(uuid.uuid4()),
    user="alice",
    login="root",
    node="node-1",
    roles=("access",),
    term="xterm-256color",
    shell="/bin/bash",
)


def output(time: float, data: bytes) -> bytes:
    return FRAME.pack(OUTPUT_TYPE, time, len(data)) + data


def events(cast: bytes) -> list[Event]:
    reader = CastReader(cast.split(b"\n"))
    assert reader.header == HEADER
    found = list(reader.events())
    assert reader.damage is None
    return found


def test_round_trip_to_the_asciicast_a_node_wrote_before(tmp_path: Path) -> None:
    path = tmp_path / f"{HEADER.session_id}.cast"
    log = RawLogFile.create(path, HEADER)
    log.append([output(0.5, b"$ "), output(0.75, b"ls\r\n")])
    log.append([resize_frame(1.25, 120, 40), output(2.0, b'"quoted" \\ \x1b[0m\t\xc3\xa9')])
    log.close()
    with pytest.raises(FileExistsError):
        RawLogFile.create(path, HEADER)  # never over an existing recording
    cast, converter = to_asciicast(path.read_bytes())
    assert converter.frames.pending == 0 and converter.frames.damage is None
    # Byte for byte what encoding the same events directly gives: the header line as
    # the node wrote it, then asciicast lines (asciinema's 6 decimals, JSON escapes).
    assert cast == HEADER.to_line() + CastEncoder().encode(
        [
            (0.5, "o", b"$ "),
            (0.75, "o", b"ls\r\n"),
            (1.25, "r", (120, 40)),
            (2.0, "o", '"quoted" \\ \x1b[0m\té'.encode()),
        ]
    )
    assert [(e.time, e.type, e.data) for e in events(cast)] == [
        (0.5, "o", "$ "),
        (0.75, "o", "ls\r\n"),
        (1.25, "r", "120x40"),
        (2.0, "o", '"quoted" \\ \x1b[0m\té'),
    ]


def test_output_close_together_is_one_event_of_bounded_size() -> None:
    step = COALESCE_SECONDS / 10
    chunk = b"x" * 4096
    frames = [output(1 + n * step / 100, chunk) for n in range(40)]  # 160 KiB in 0.4 ms
    frames += [output(5.0, b"later")]
    cast, _ = to_asciicast(preamble(HEADER) + b"".join(frames))
    found = events(cast)
    assert "".join(e.data for e in found) == "x" * 4096 * 40 + "later"
    sizes = [len(e.data) for e in found]
    assert len(found) == 4 and max(sizes) <= MAX_EVENT_BYTES + len(chunk)
    assert found[-1] == Event(5.0, "o", "later")
    # Output 10 ms or more after an event began starts the next one.
    cast, _ = to_asciicast(
        preamble(HEADER) + output(1.0, b"a") + output(1.005, b"b") + output(1.01, b"c")
    )
    assert [(e.time, e.data) for e in events(cast)] == [(1.0, "ab"), (1.01, "c")]


def test_a_log_cut_off_by_a_crash_converts_up_to_its_last_whole_frame() -> None:
    whole = preamble(HEADER) + output(0.1, b"before ") + output(0.2, b"the crash")
    torn = output(0.3, b"never finished")
    for cut in range(1, len(torn)):  # inside the frame header, or inside the data
        cast, converter = to_asciicast(whole + torn[:cut])
        assert converter.frames.pending == cut
        assert converter.frames.damage is None
        assert [e.data for e in events(cast)] == ["before ", "the crash"]


def test_a_log_cut_off_inside_its_header_is_refused() -> None:
    with pytest.raises(BadParameter, match="ends inside its header"):
        to_asciicast(preamble(HEADER)[:-5])
    with pytest.raises(BadParameter, match="not a certgate session log"):
        to_asciicast(HEADER.to_line())


def test_a_bad_frame_stops_the_conversion_there() -> None:
    data = preamble(HEADER) + output(0.1, b"good") + b"Z" + b"\0" * 20 + output(0.3, b"lost")
    cast, converter = to_asciicast(data)
    assert [e.data for e in events(cast)] == ["good"]
    assert converter.frames.damage == "bad frame at byte 17 of the session frames"


def test_the_end_frame_becomes_a_last_marker_at_the_sessions_end() -> None:
    split = "é".encode()[:1]  # a character the session never finished, before the end
    data = preamble(HEADER) + output(0.1, b"bye " + split) + end_frame(42.5)
    cast, converter = to_asciicast(data)
    assert converter.frames.damage is None
    assert [(e.time, e.type, e.data) for e in events(cast)] == [
        (0.1, "o", "bye "),
        (42.5, "o", "\ufffd"),
        (42.5, "m", END_LABEL),
    ]
    # A log without one (cut off by a crash, or from before the end frame) ends at its
    # last output, as recordings always did.
    cast, _ = to_asciicast(preamble(HEADER) + output(0.1, b"bye"))
    assert events(cast)[-1] == Event(0.1, "o", "bye")
    # An end frame with a payload is no end frame.
    bad = FRAME.pack(END_TYPE, 2.0, 3) + b"abc"
    cast, converter = to_asciicast(preamble(HEADER) + output(0.1, b"bye") + bad)
    assert converter.frames.damage is not None and events(cast)[-1].type == "o"


def test_a_character_split_across_reads_and_batches_is_written_whole() -> None:
    text = "héllo ✓ 𝄞 done"
    raw = text.encode()
    cut1, cut2 = raw.index("é".encode()) + 1, raw.index("𝄞".encode()) + 2
    # Far apart in time: three events, each cut inside a character.
    frames = [output(0.1, raw[:cut1]), output(0.2, raw[cut1:cut2]), output(0.3, raw[cut2:])]
    cast, _ = to_asciicast(preamble(HEADER) + b"".join(frames))
    found = events(cast)
    assert "".join(e.data for e in found) == text
    assert "\ufffd" not in "".join(e.data for e in found)
    # A character the session never finished shows as U+FFFD at the end.
    cast, _ = to_asciicast(preamble(HEADER) + output(0.1, b"tail " + "é".encode()[:1]))
    assert "".join(e.data for e in events(cast)) == "tail \ufffd"


@given(
    st.text(st.characters(exclude_categories=["Cs"])),  # surrogates are not UTF-8
    st.lists(st.integers(min_value=0, max_value=64), max_size=12),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=5),
)
def test_any_framing_and_any_reads_of_the_log_give_the_same_text(
    text: str, cuts: list[int], reads: list[int]
) -> None:
    raw = text.encode()
    points = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    log = b"".join(
        output(i * 0.004, raw[a:b]) for i, (a, b) in enumerate(itertools.pairwise(points))
    )
    # The uploader reads the log in chunks that cut frames anywhere.
    converter = CastConverter()
    body, at = [], 0
    for size in itertools.cycle(reads):
        if at >= len(log):
            break
        body.append(converter.feed(log[at : at + size]))
        at += size
    body.append(converter.finish())
    assert converter.frames.pending == 0
    shown = "".join(e.data for e in events(HEADER.to_line() + b"".join(body)))
    assert shown == text


def test_append_writes_more_buffers_than_one_writev_takes(tmp_path: Path) -> None:
    log = RawLogFile.create(tmp_path / "log", HEADER)
    chunks = [output(n / 1000, b"%d " % n) for n in range(IOV_MAX * 2 + 7)]
    log.append(chunks)
    log.close()
    cast, _ = to_asciicast((tmp_path / "log").read_bytes())
    shown = "".join(e.data for e in events(cast))
    assert shown == "".join(f"{n} " for n in range(IOV_MAX * 2 + 7))


def test_a_failed_append_raises(tmp_path: Path) -> None:
    log = RawLogFile.create(tmp_path / "log", HEADER)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, log._fd)  # type: ignore[arg-type]
    finally:
        os.close(full)
    with pytest.raises(OSError, match="No space left on device"):
        log.append([output(0.1, b"x")])
    log.close()
    with pytest.raises(OSError, match="closed"):
        log.append([output(0.2, b"y")])


def test_the_header_line_is_sent_as_the_node_wrote_it() -> None:
    cast, _ = to_asciicast(preamble(HEADER))
    assert cast == HEADER.to_line()
    assert json.loads(cast)["certgate"]["session_id"] == HEADER.session_id


@pytest.mark.parametrize("size", [1, 5, 64, 10_000, 1 << 20])
async def test_the_uploader_reads_the_same_asciicast_at_any_chunk_size(
    tmp_path: Path, size: int
) -> None:
    # cast_chunks stops at the first short read (the end of a finished file): any chunk
    # size, one longer than the file, one that divides it, gives the whole recording.
    path = tmp_path / f"{HEADER.session_id}.cast"
    log = RawLogFile.create(path, HEADER)
    frames = [output(0.01 * n, f"line {n}\r\n".encode()) for n in range(200)]
    log.append([*frames, end_frame(3.0)])
    log.close()
    expected, _ = to_asciicast(path.read_bytes())
    chunks = [chunk async for chunk in cast_chunks(path, size)]
    assert b"".join(chunks) == expected
