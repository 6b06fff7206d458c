"""asciicast v2: the file format of session recordings (DESIGN §5).

A recording is UTF-8 text, one JSON value per line (https://docs.asciinema.org/manual/
asciicast/v2/): a header object, then events `[time, type, data]`, time in seconds since
the session began:

    {"version": 2, "width": 100, "height": 30, "timestamp": 1764000000,
     "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
     "certgate": {"session_id": "…", "user": "alice", "login": "root", "node": "db-1",
                  "roles": ["access"], "kind": "shell", "command": null}}
    [0.012345, "o", "root@db-1:~# "]
    [1.500000, "r", "120x40"]
    [9.250000, "m", "session ended"]

asciinema's player ignores the `certgate` object. The last line of a session that ended
(not one cut off by a crash) is a marker, asciicast v2's `m` event, at the time the
session ended: a session often sits idle after its last output, and without the marker
the recording's length would be that of its output, shorter than the session that
`session.end` reports. Recordings made before the marker end at their last output.

Output bytes are decoded as UTF-8 by an incremental decoder, so a character split
across two reads is written whole; bytes that are not UTF-8 become U+FFFD, as a
terminal would show them.

A node does not write this format while a session runs: it writes a raw session log
(rawlog.py), which `CastEncoder` (pure, no I/O) turns into lines after the session, as
it is uploaded. A stored file that is damaged (a disk error, a truncated copy) plays up
to its first broken line, which `CastReader` reports.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from certgate.errors import BadParameter

VERSION = 2
OUTPUT = "o"
RESIZE = "r"
MARKER = "m"
# The label of the marker that ends a recording whose session ended.
END_LABEL = "session ended"

# The sane range of a header's start time (Unix seconds: 1970 to 2100), and the latest
# time an event may have (seconds after the start: ten years). Anything else is a broken
# or forged file, refused before a date or a duration is computed from it.
MAX_TIMESTAMP = 4_102_444_800
MAX_EVENT_TIME = 10 * 365 * 86_400
# How deep the header's JSON may nest (it holds two small objects; what is unknown is
# kept as read, and no one should have to walk a deep one again).
MAX_HEADER_DEPTH = 32

# A raw event as the recorder collects it: (seconds since start, type, payload). Output
# payloads are bytes (decoded when encoded), resize payloads are (width, height), marker
# payloads their label.
RawEvent = tuple[float, str, Any]


@dataclass(frozen=True)
class Header:
    """The first line of a recording."""

    width: int
    height: int
    timestamp: float  # Unix time the session began
    session_id: str
    user: str
    login: str
    node: str
    roles: tuple[str, ...] = ()
    kind: str = "shell"
    command: str | None = None
    term: str = "xterm"
    shell: str = "/bin/sh"
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept as read

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "version": VERSION,
            "width": self.width,
            "height": self.height,
            "timestamp": int(self.timestamp),
            "env": {"TERM": self.term, "SHELL": self.shell},
            "certgate": {
                "session_id": self.session_id,
                "user": self.user,
                "login": self.login,
                "node": self.node,
                "roles": list(self.roles),
                "kind": self.kind,
                "command": self.command,
                # Sub-second start, which the integer `timestamp` cannot hold.
                "start": self.timestamp,
            },
        }

    def to_line(self) -> bytes:
        return (json.dumps(self.to_dict(), ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Any) -> Header:
        """The header in `data`; ValueError saying what is wrong if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("the header is not a JSON object")
        if data.get("version") != VERSION:
            raise ValueError(f"not an asciicast v2 header (version {data.get('version')!r})")
        width, height = data.get("width"), data.get("height")
        if not isinstance(width, int) or not isinstance(height, int):
            raise ValueError("the header needs positive integer width and height")
        if not _positive_int(width) or not _positive_int(height):
            raise ValueError("the header needs positive integer width and height")
        env: dict[str, Any] = data["env"] if isinstance(data.get("env"), dict) else {}
        meta: dict[str, Any] = data["certgate"] if isinstance(data.get("certgate"), dict) else {}
        timestamp = meta.get("start", data.get("timestamp", 0))
        if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
            raise ValueError("the header timestamp is not a number")
        if not 0 <= timestamp <= MAX_TIMESTAMP:  # False for NaN too
            raise ValueError("the header timestamp is not a time between 1970 and 2100")
        roles = meta.get("roles", [])
        command = meta.get("command")
        known = {"version", "width", "height", "timestamp", "env", "certgate"}
        return cls(
            width=int(width),
            height=int(height),
            timestamp=float(timestamp),
            session_id=str(meta.get("session_id", "")),
            user=str(meta.get("user", "")),
            login=str(meta.get("login", "")),
            node=str(meta.get("node", "")),
            roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
            kind=str(meta.get("kind", "shell")),
            command=command if isinstance(command, str) else None,
            term=str(env.get("TERM", "")),
            shell=str(env.get("SHELL", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Event:
    """One event of a recording: `type` is "o" (output), "r" (resize, "WxH") or "m"
    (a marker: the end of the session, END_LABEL)."""

    time: float
    type: str
    data: str

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "type": self.type, "data": self.data}


def event_line(time: float, kind: str, data: str) -> str:
    # 6 decimals as asciinema writes them: microseconds, and no float repr noise. The
    # data is JSON with ASCII escapes: json's fastest encoder (about 4x the speed of
    # ensure_ascii=False), and no raw U+2028/U+0085 that a reader could split a line at.
    return f'[{time:.6f}, "{kind}", {json.dumps(data)}]\n'


# Bytes that plain terminal text is made of: printable ASCII, CR, LF, TAB and ESC.
_PLAIN = bytes(range(0x20, 0x7F)) + b"\r\n\t\x1b"


def _plain_output_line(time: float, raw: bytes) -> bytes:
    """event_line(time, "o", raw.decode()) for bytes that are all in _PLAIN."""
    for char, escape in _ESCAPES:
        if char in raw:  # a memchr: most output lacks most of these
            raw = raw.replace(char, escape)
    return b'[%.6f, "o", "%s"]\n' % (time, raw)


# What json.dumps writes for each special byte of _PLAIN; the backslash goes first.
_ESCAPES = (
    (b"\\", b"\\\\"),
    (b'"', b'\\"'),
    (b"\n", b"\\n"),
    (b"\r", b"\\r"),
    (b"\t", b"\\t"),
    (b"\x1b", b"\\u001b"),
)


class CastEncoder:
    """Turns batches of raw events into asciicast lines; keeps the UTF-8 decoder state.

    One encoder per recording, fed in order. Pure: no I/O, no clock.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._last_time = 0.0

    def encode(self, events: Sequence[RawEvent]) -> bytes:
        lines: list[str | bytes] = []
        for time, kind, payload in events:
            # Never backwards, whatever the caller's clock did.
            time = max(time, self._last_time)
            if kind == OUTPUT:
                raw = bytes(payload)
                if raw and not raw.translate(None, _PLAIN) and not self._decoder.getstate()[0]:
                    # Plain ASCII text (the bulk of a `cat`): JSON-escaped with a few
                    # bytes.replace passes, twice the speed of decode + json.dumps and
                    # byte for byte the same result.
                    lines.append(_plain_output_line(time, raw))
                    self._last_time = time
                    continue
                text = self._decoder.decode(raw)
                if not text:
                    continue  # only the start of a split character so far
                lines.append(event_line(time, OUTPUT, text))
            elif kind == RESIZE:
                width, height = payload
                lines.append(event_line(time, RESIZE, f"{width}x{height}"))
            elif kind == MARKER:
                lines.append(event_line(time, MARKER, str(payload)))
            else:
                raise ValueError(f"unknown event type {kind!r}")
            self._last_time = time
        return b"".join(line if isinstance(line, bytes) else line.encode() for line in lines)

    def finish(self, time: float) -> bytes:
        """Whatever a split character left in the decoder, as U+FFFD, at `time`."""
        text = self._decoder.decode(b"", final=True)
        if not text:
            return b""
        return event_line(max(time, self._last_time), OUTPUT, text).encode()


class CastReader:
    """Reads a recording: `header` at once, then `events()` until the end or damage.

    Give it the file's lines split at "\n" only (a file object, or `text.split("\n")`;
    not `str.splitlines()`, which also splits at other Unicode line breaks). A line that
    is not a valid event stops the events; `damage` then says where and
    why ("recording ends at line 7: ..."), and nothing after it is trusted. A header
    that cannot be read raises BadParameter.
    """

    def __init__(self, lines: Iterable[str | bytes]) -> None:
        self._lines = iter(lines)
        self.damage: str | None = None
        self.line_count = 0
        first = self._next_line()
        if first is None:
            raise BadParameter("recording ends at line 1: the file is empty")
        try:
            data = _loads(first)
            if _depth(data) > MAX_HEADER_DEPTH:
                raise ValueError(f"the header is nested more than {MAX_HEADER_DEPTH} deep")
            self.header = Header.from_dict(data)
        except ValueError as exc:
            raise BadParameter(f"recording ends at line 1: {_reason(exc)}") from exc

    def _next_line(self) -> str | None:
        for raw in self._lines:
            self.line_count += 1
            line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
            if line.strip():
                return line
        return None

    def events(self) -> Iterator[Event]:
        last = 0.0
        while (line := self._next_line()) is not None:
            try:
                event = _parse_event(line)
            except ValueError as exc:
                self.damage = f"recording ends at line {self.line_count}: {_reason(exc)}"
                return
            if event.time < last:
                self.damage = (
                    f"recording ends at line {self.line_count}: time goes backwards "
                    f"({event.time:.6f} after {last:.6f})"
                )
                return
            last = event.time
            yield event


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        if exc.msg.startswith("Unterminated string") or exc.pos >= len(exc.doc.rstrip()):
            return "the line is cut short (truncated file?)"
        return f"not JSON ({exc.msg}, column {exc.colno})"
    return str(exc)


def _loads(line: str | bytes) -> Any:
    """One line's JSON; ValueError for what JSON does not allow though Python's parser
    takes it (NaN, Infinity), and for nesting too deep to parse."""
    try:
        return json.loads(line, parse_constant=_not_json)
    except RecursionError as exc:
        raise ValueError("the line is nested too deep") from exc


def _not_json(name: str) -> Any:
    raise ValueError(f"not JSON ({name} is not a JSON number)")


def _depth(value: Any) -> int:
    """How deep `value` nests (1: a scalar), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _parse_event(line: str | bytes) -> Event:
    value = _loads(line)
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError("not an event ([time, type, data])")
    time, kind, data = value
    if (
        not isinstance(time, int | float)
        or isinstance(time, bool)
        or not 0 <= time <= MAX_EVENT_TIME  # False for NaN; 1e400 parses as infinity
    ):
        raise ValueError(f"event time is not a number of seconds from 0 to {MAX_EVENT_TIME}")
    if not isinstance(kind, str) or not isinstance(data, str):
        raise ValueError("event type and data must be strings")
    if kind == RESIZE and not _is_size(data):
        raise ValueError(f'resize event "{data}" is not WIDTHxHEIGHT')
    return Event(float(time), kind, data)


def _is_size(text: str) -> bool:
    width, sep, height = text.partition("x")
    return bool(sep) and width.isdigit() and height.isdigit()


def read_header(file: IO[bytes]) -> Header:
    """The header of the recording in `file`, read from where it is (BadParameter if
    it has none)."""
    return CastReader([file.readline(1 << 20)]).header


# How much of a recording's end `last_event_time` reads, and how many of its last lines
# it tries: its work is bounded whatever the file holds. An event line is at most a few
# hundred KiB (rawlog.py: 64 KiB of output per event, escaped).
TAIL_BYTES = 4 * 1024 * 1024
TAIL_LINES = 64


def last_event_time(file: IO[bytes]) -> float | None:
    """The time of the last valid event in `file` (a recording, header first), read
    from its end: the recording's duration (the session's, when it ends with the end
    marker). 0 if the file holds no event at all; None if its last TAIL_LINES lines
    (within TAIL_BYTES) hold none that is valid: that is no recording.

    A broken last line (a torn write) is skipped, so the duration of a damaged
    recording is that of what can be played. At most TAIL_BYTES are read and
    TAIL_LINES parsed, however long the recording is.
    """
    size = file.seek(0, os.SEEK_END)
    start = max(0, size - TAIL_BYTES)
    file.seek(start)
    lines = file.read(size - start).split(b"\n")
    # From the file's start, the first line is the header; else it is probably part of
    # a line.
    lines = lines[1:]
    tried = 0
    for raw in reversed(lines):
        if not raw.strip():
            continue
        if tried == TAIL_LINES:
            return None
        tried += 1
        try:
            return _parse_event(raw).time
        except ValueError:
            continue
    # Nothing tried: a file of the header alone, or one line longer than the tail.
    return None if tried or start > 0 else 0.0
