"""The node's session recorder: cheap calls in the data path, whole frames on disk soon,
the file moved aside when the session ends, and failures reported."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from certgate.recording.asciicast import END_LABEL, CastReader, Header, last_event_time
from certgate.recording.rawlog import IOV_MAX, RawLogFile, to_asciicast
from certgate.recording.recorder import (
    FLUSH_BYTES,
    FLUSH_INTERVAL,
    RecordingDirectory,
    RecordingWriter,
    SessionRecorder,
)


def header() -> Header:
    return Header(
        width=80,
        height=24,
        timestamp=1_900_000_000.0,
        session_id=str(uuid.uuid4()),
        user="alice",
        login="root",
        node="node-1",
    )


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.directory = RecordingDirectory(tmp_path / "recordings")
        self.directory.create()
        self.writer = RecordingWriter()
        self.ended: list[tuple[str, bool]] = []
        self.failures: list[tuple[str, str]] = []

    def open(self, head: Header | None = None) -> SessionRecorder:
        return SessionRecorder.open(
            head or header(),
            self.directory,
            self.writer,
            on_ended=lambda sid, ok: self.ended.append((sid, ok)),
            on_failure=lambda sid, msg: self.failures.append((sid, msg)),
        )

    async def settle(self) -> None:
        await self.writer.drain()
        await asyncio.sleep(0)  # the writer's callbacks to the loop


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.writer.close()


def events(path: Path) -> list[list[object]]:
    """The events of the session log at `path`, as they will be uploaded."""
    cast, _ = to_asciicast(path.read_bytes())
    reader = CastReader(cast.split(b"\n"))
    return [[e.time, e.type, e.data] for e in reader.events()]


async def test_output_reaches_the_file_within_the_flush_interval(harness: Harness) -> None:
    recorder = harness.open()
    live = harness.directory.live(recorder.session_id)
    recorder.on_output(b"first ")
    recorder.on_output(b"chunk")  # within 10 ms: the same event
    recorder.on_resize(120, 40)
    assert events(live) == []  # nothing written in the data path itself
    async with asyncio.timeout(15):  # the flush timer writes them, with no further output
        while len(events(live)) < 2:
            await asyncio.sleep(FLUSH_INTERVAL / 2)
    await harness.settle()
    written = events(live)
    assert [e[1:] for e in written] == [["o", "first chunk"], ["r", "120x40"]]
    # Still the live file: a crash now leaves all of this for the next start.
    assert live.exists() and harness.ended == []


async def test_a_burst_is_flushed_at_flush_bytes_without_waiting(harness: Harness) -> None:
    recorder = harness.open()
    for _ in range(FLUSH_BYTES // 4096 + 4):
        recorder.on_output(b"x" * 4096)
    await harness.settle()  # no sleep: the FLUSH_BYTES threshold handed it over
    text = "".join(str(e[2]) for e in events(harness.directory.live(recorder.session_id)))
    assert len(text) >= FLUSH_BYTES


async def test_many_small_outputs_are_flushed_before_writev_takes_too_many(
    harness: Harness,
) -> None:
    recorder = harness.open()
    for n in range(IOV_MAX):  # a frame header and the data each: 2 * IOV_MAX buffers
        recorder.on_output(b"%d," % n)
    await harness.settle()  # no sleep: the number of buffers handed it over
    text = "".join(str(e[2]) for e in events(harness.directory.live(recorder.session_id)))
    assert text.startswith("0,1,2,") and len(text) > IOV_MAX


async def test_end_moves_the_whole_file_aside_and_reports_it(harness: Harness) -> None:
    recorder = harness.open()
    recorder.on_output("tail é".encode()[:-1])  # ends inside a character
    recorder.on_end()
    recorder.on_output(b"after the end")  # ignored
    await harness.settle()
    assert harness.ended == [(recorder.session_id, True)]
    assert not harness.directory.live(recorder.session_id).exists()
    done = harness.directory.finished(recorder.session_id)
    assert "".join(str(e[2]) for e in events(done) if e[1] == "o") == "tail \ufffd"


async def test_the_recording_lasts_until_the_session_ended_not_its_last_output(
    harness: Harness,
) -> None:
    now = [100.0]
    head = header()
    recorder = SessionRecorder(
        RawLogFile.create(harness.directory.live(head.session_id), head),
        head,
        harness.directory,
        harness.writer,
        on_ended=lambda sid, ok: harness.ended.append((sid, ok)),
        clock=lambda: now[0],
    )
    now[0] += 0.5
    recorder.on_output(b"last words")
    now[0] += 30.0  # idle, then the session ends without a word
    recorder.on_end()
    await harness.settle()
    done = harness.directory.finished(head.session_id)
    assert events(done) == [[0.5, "o", "last words"], [30.5, "m", END_LABEL]]
    cast, _ = to_asciicast(done.read_bytes())
    assert last_event_time(io.BytesIO(cast)) == 30.5  # the duration auth stores


async def test_a_failed_write_is_reported_and_recording_stops(harness: Harness) -> None:
    recorder = harness.open()
    # The disk fills up under the session: the file's descriptor now points at /dev/full.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, recorder._file._fd)  # type: ignore[arg-type]
    finally:
        os.close(full)
    recorder.on_output(b"x" * (FLUSH_BYTES + 1))
    await harness.settle()
    assert harness.failures == [(recorder.session_id, "No space left on device")]
    assert recorder.failed == "No space left on device"
    recorder.on_output(b"more")  # dropped, no second report
    recorder.on_end()
    await harness.settle()
    # Kept in the live directory: uploaded marked incomplete.
    assert harness.ended == [(recorder.session_id, False)]
    assert harness.directory.live(recorder.session_id).exists()


def test_a_recording_file_is_never_reused(harness: Harness, tmp_path: Path) -> None:
    head = header()
    RawLogFile.create(harness.directory.live(head.session_id), head).close()
    with pytest.raises(FileExistsError):
        harness.open(head)


async def test_header_first_line_is_the_sessions(harness: Harness) -> None:
    head = header()
    recorder = harness.open(head)
    # On disk from the start: a crash before any output still leaves whose session it was.
    cast, _ = to_asciicast(harness.directory.live(recorder.session_id).read_bytes())
    first = cast.split(b"\n")[0]
    assert json.loads(first)["certgate"]["session_id"] == head.session_id
    recorder.on_end()
    await harness.settle()
