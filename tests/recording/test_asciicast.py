"""asciicast v2: what the encoder writes, what the reader accepts, where it stops."""

from __future__ import annotations

import io
import itertools
import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.errors import BadParameter
from certgate.recording import asciicast
from certgate.recording.asciicast import (
    CastEncoder,
    CastReader,
    Event,
    Header,
    event_line,
    last_event_time,
    read_header,
)

HEADER = Header(
    width=100,
    height=30,
    timestamp=1_900_000_000.25,
    session_id=str(uuid.uuid4()),
    user="alice",
    login="root",
    node="node-1",
    roles=("access", "auditor"),
    kind="shell",
    term="xterm-256color",
    shell="/bin/bash",
)


def lines_of(*batches: bytes) -> list[str]:
    return [line for line in b"".join(batches).decode().split("\n") if line]


def test_header_is_asciicast_v2_with_certgate_metadata() -> None:
    data = json.loads(HEADER.to_line())
    assert data["version"] == 2
    assert (data["width"], data["height"], data["timestamp"]) == (100, 30, 1_900_000_000)
    assert data["env"] == {"TERM": "xterm-256color", "SHELL": "/bin/bash"}
    assert data["certgate"]["session_id"] == HEADER.session_id
    assert data["certgate"]["roles"] == ["access", "auditor"]
    assert Header.from_dict(data) == HEADER


def test_events_are_written_in_order_with_resizes() -> None:
    encoder = CastEncoder()
    out = encoder.encode([(0.5, "o", b"hello\r\n"), (1.25, "r", (120, 40)), (2.0, "o", b"$ ")])
    assert [json.loads(line) for line in lines_of(out)] == [
        [0.5, "o", "hello\r\n"],
        [1.25, "r", "120x40"],
        [2.0, "o", "$ "],
    ]


def test_a_character_split_across_reads_is_written_whole() -> None:
    encoder = CastEncoder()
    text = "héllo ✓ 𝄞"
    raw = text.encode()
    cut1, cut2 = raw.index("é".encode()) + 1, raw.index("𝄞".encode()) + 2
    out = [
        encoder.encode([(0.1, "o", raw[:cut1])]),
        encoder.encode([(0.2, "o", raw[cut1:cut2])]),
        encoder.encode([(0.3, "o", raw[cut2:])]),
    ]
    decoded = "".join(json.loads(line)[2] for line in lines_of(*out))
    assert decoded == text
    assert "\ufffd" not in decoded


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    encoder = CastEncoder()
    out = encoder.encode([(0.1, "o", b"ok \xff\xfe end")])
    assert json.loads(out)[2] == "ok \ufffd\ufffd end"
    # A split character the session never finished shows as U+FFFD at the end.
    assert encoder.encode([(0.2, "o", "é".encode()[:1])]) == b""
    assert json.loads(encoder.finish(0.3))[1:] == ["o", "\ufffd"]


def test_time_never_goes_backwards() -> None:
    encoder = CastEncoder()
    out = encoder.encode([(1.0, "o", b"a"), (0.5, "o", b"b")])
    assert [json.loads(line)[0] for line in lines_of(out)] == [1.0, 1.0]


@given(
    st.text(st.characters(exclude_categories=["Cs"])),  # surrogates are not UTF-8
    st.lists(st.integers(min_value=0, max_value=64), max_size=20),
)
def test_any_chunking_decodes_to_the_same_text(text: str, cuts: list[int]) -> None:
    raw = text.encode()
    points = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    encoder = CastEncoder()
    out = b"".join(
        encoder.encode([(float(i), "o", raw[a:b])])
        for i, (a, b) in enumerate(itertools.pairwise(points))
    )
    out += encoder.finish(99.0)
    assert "".join(json.loads(line)[2] for line in lines_of(out)) == text


def written(tmp_path: Path, *events: tuple[float, str, object]) -> Path:
    path = tmp_path / f"{HEADER.session_id}.cast"
    path.write_bytes(HEADER.to_line() + CastEncoder().encode(list(events)))
    return path


def test_file_round_trip(tmp_path: Path) -> None:
    path = written(tmp_path, (0.1, "o", b"one"), (0.2, "r", (90, 20)), (3.5, "o", b"two"))
    reader = CastReader(path.read_text().split("\n"))
    assert reader.header == HEADER
    assert list(reader.events()) == [
        Event(0.1, "o", "one"),
        Event(0.2, "r", "90x20"),
        Event(3.5, "o", "two"),
    ]
    assert reader.damage is None
    with path.open("rb") as file:
        assert read_header(file) == HEADER
        assert last_event_time(file) == 3.5


def test_a_truncated_file_plays_to_the_damage_and_says_where(tmp_path: Path) -> None:
    path = written(tmp_path, (0.1, "o", b"one"), (0.2, "o", b"two"), (0.3, "o", b"three"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 6])  # cut inside the last event
    reader = CastReader(path.read_text().split("\n"))
    assert [e.data for e in reader.events()] == ["one", "two"]
    assert reader.damage == "recording ends at line 4: the line is cut short (truncated file?)"
    with path.open("rb") as file:
        assert last_event_time(file) == 0.2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("garbage", "not JSON"),
        ('{"a": 1}', "not an event"),
        ('[0.5, "o"]', "not an event"),
        ('[-1, "o", "x"]', "event time is not a number of seconds from 0"),
        ('[NaN, "o", "x"]', "not JSON (NaN is not a JSON number)"),
        ('[Infinity, "o", "x"]', "not JSON (Infinity is not a JSON number)"),
        ('[1e400, "o", "x"]', "event time is not a number of seconds from 0"),
        ('[4e8, "o", "x"]', "event time is not a number of seconds from 0"),
        ("[" * 100_000, "nested too deep"),
        ('[0.5, "o", 7]', "event type and data must be strings"),
        ('[0.5, "r", "wide"]', 'resize event "wide" is not WIDTHxHEIGHT'),
        ('[0.01, "o", "x"]', "time goes backwards"),
    ],
)
def test_corrupt_lines_stop_playback_with_the_line_number(line: str, reason: str) -> None:
    text = [HEADER.to_line().decode(), '[0.1, "o", "a"]', '[0.2, "o", "b"]', line, '[9, "o", "z"]']
    reader = CastReader(text)
    assert [e.data for e in reader.events()] == ["a", "b"]
    assert reader.damage is not None
    assert reader.damage.startswith("recording ends at line 4: ")
    assert reason in reader.damage


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (None, "the file is empty"),
        ("{not json", "not JSON"),
        ('{"version": 1, "width": 80, "height": 24}', "not an asciicast v2 header"),
        ('{"version": 2, "width": 0, "height": 24}', "positive integer width and height"),
        ('{"version": 2, "width": 80, "height": 24, "timestamp": NaN}', "not JSON (NaN"),
        ('{"version": 2, "width": 80, "height": 24, "timestamp": 1e20}', "between 1970 and 2100"),
        ('{"version": 2, "width": 80, "height": 24, "timestamp": -1e12}', "between 1970 and 2100"),
        ('{"version": 2, "width": 80, "height": 24, "timestamp": 1e400}', "between 1970 and 2100"),
        ("[" * 100_000, "nested too deep"),
        ('{"version": 2, "width": 80, "height": 24, "x": ' + "[" * 40 + "]" * 40 + "}", "deep"),
    ],
)
def test_an_unreadable_header_is_refused(first: str | None, reason: str) -> None:
    with pytest.raises(BadParameter, match="recording ends at line 1: ") as caught:
        CastReader([] if first is None else [first])
    assert reason in caught.value.message


def test_last_event_time_reads_only_the_tail_of_long_recordings() -> None:
    lines = [HEADER.to_line()] + [
        f'[{n / 10:.6f}, "o", "{"x" * 500}"]\n'.encode() for n in range(2000)
    ]
    assert last_event_time(io.BytesIO(b"".join(lines))) == pytest.approx(199.9)
    # One event bigger than the first tail read.
    big = [HEADER.to_line(), f'[7.5, "o", "{"y" * 600_000}"]\n'.encode()]
    assert last_event_time(io.BytesIO(b"".join(big))) == 7.5
    assert last_event_time(io.BytesIO(HEADER.to_line())) == 0.0


def test_last_event_time_does_bounded_work_on_a_tail_of_garbage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file whose end holds no event: the answer is None (no recording), found by
    parsing at most TAIL_LINES lines, not every line of the file (an upload of 30 MiB
    of "x\\n" held auth's event loop for a minute)."""
    parsed = 0
    parse = asciicast._parse_event

    def counting(line: str | bytes) -> Event:
        nonlocal parsed
        parsed += 1
        return parse(line)

    monkeypatch.setattr(asciicast, "_parse_event", counting)
    garbage = HEADER.to_line() + b'[0.5, "o", "a"]\n' + b"x\n" * (3 * 1024 * 1024 // 2)
    assert last_event_time(io.BytesIO(garbage)) is None
    assert parsed <= asciicast.TAIL_LINES
    # A long line that fills the whole tail: no event in it either.
    long_line = HEADER.to_line() + b"y" * (asciicast.TAIL_BYTES + 10) + b"\n"
    assert last_event_time(io.BytesIO(long_line)) is None


def test_unicode_line_breaks_are_escaped_so_a_line_is_a_line() -> None:
    out = CastEncoder().encode([(0.1, "o", "a\u2028b\x85c\u2029".encode())]).decode()
    assert len(out.splitlines()) == 1
    assert json.loads(out)[2] == "a\u2028b\x85c\u2029"


@given(st.lists(st.binary(max_size=40) | st.sampled_from([b'"\\\r\n\t\x1b[0m', "é".encode()])))
def test_the_plain_text_fast_path_writes_what_json_would(chunks: list[bytes]) -> None:
    encoder = CastEncoder()
    out = b"".join(encoder.encode([(0.5, "o", chunk)]) for chunk in chunks)
    out += encoder.finish(1.0)
    joined = b"".join(chunks).decode("utf-8", errors="replace")
    assert "".join(json.loads(line)[2] for line in lines_of(out)) == joined
    plain = b'say "hi"\\\r\n\t\x1b[0m'
    assert CastEncoder().encode([(0.5, "o", plain)]).decode() == event_line(
        0.5, "o", plain.decode()
    )
