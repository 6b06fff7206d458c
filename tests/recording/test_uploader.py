"""The node's uploader: leftovers after a crash, delete only after auth confirms, retries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable
from pathlib import Path

import pytest

from certgate.errors import AlreadyExists, BadParameter, CertgateError, ConnectionProblem
from certgate.recording.asciicast import CastEncoder, Header
from certgate.recording.rawlog import FRAME, OUTPUT_TYPE, preamble
from certgate.recording.recorder import RecordingDirectory
from certgate.recording.uploader import RecordingUploader


class FakeAuth:
    """Stands in for auth's PUT /v1/recordings/{id}; fails while `down` is set."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[bytes, bool]] = {}
        self.truncated: set[str] = set()
        self.down = False
        self.refuse: CertgateError | None = None
        self.attempts = 0

    async def send(
        self, session_id: str, chunks: AsyncIterable[bytes], incomplete: bool, truncated: bool
    ) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionProblem("auth is unreachable")
        if self.refuse is not None:
            raise self.refuse
        data = b"".join([chunk async for chunk in chunks])
        self.stored[session_id] = (data, incomplete)
        if truncated:
            self.truncated.add(session_id)


async def eventually(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


@pytest.fixture
def directory(tmp_path: Path) -> RecordingDirectory:
    d = RecordingDirectory(tmp_path / "recordings")
    d.create()
    return d


async def test_leftovers_are_uploaded_at_start_and_marked(directory: RecordingDirectory) -> None:
    cut_off, finished = str(uuid.uuid4()), str(uuid.uuid4())
    directory.live(cut_off).write_bytes(b"cut off by kill -9")
    directory.finished(finished).write_bytes(b"ended, upload pending")
    (directory.path / "notes.cast").write_bytes(b"not ours")
    auth = FakeAuth()
    uploader = RecordingUploader(directory, auth.send)
    assert await uploader.start() == 2
    await eventually(lambda: len(auth.stored) == 2)
    assert auth.stored[cut_off] == (b"cut off by kill -9", True)
    assert auth.stored[finished] == (b"ended, upload pending", False)
    await eventually(lambda: not directory.live(cut_off).exists())
    assert not directory.finished(finished).exists()
    assert (directory.path / "notes.cast").exists()
    await uploader.close()


async def test_nothing_is_deleted_until_auth_has_it(directory: RecordingDirectory) -> None:
    auth = FakeAuth()
    auth.down = True
    uploader = RecordingUploader(directory, auth.send, retry_min=0.02, retry_max=0.05)
    await uploader.start()
    session = str(uuid.uuid4())
    directory.finished(session).write_bytes(b"recording")
    uploader.submit(session, complete=True)
    await eventually(lambda: auth.attempts >= 3)
    assert directory.finished(session).exists() and auth.stored == {}
    assert uploader.pending() == 1
    auth.down = False
    await eventually(lambda: session in auth.stored)
    await eventually(lambda: not directory.finished(session).exists())
    assert uploader.pending() == 0
    await uploader.close()


@pytest.mark.parametrize(
    "refusal",
    [
        BadParameter("not an asciicast v2 header"),
        # Another recording holds the id: no retry can ever be taken, and each would be
        # one more session.upload.failure in the audit log.
        AlreadyExists(
            "recording x is already stored with other content: recordings are write-once"
        ),
    ],
)
async def test_a_refused_file_is_kept_aside_and_not_sent_again(
    directory: RecordingDirectory, refusal: CertgateError
) -> None:
    auth = FakeAuth()
    auth.refuse = refusal
    uploader = RecordingUploader(directory, auth.send, retry_min=0.01, retry_max=0.02)
    await uploader.start()
    session = str(uuid.uuid4())
    directory.finished(session).write_bytes(b"garbage")
    uploader.submit(session, complete=True)
    kept = directory.path / "rejected" / f"{session}.cast"
    await eventually(kept.exists)
    assert kept.read_bytes() == b"garbage"
    await asyncio.sleep(0.2)  # ten retry periods
    assert auth.attempts == 1 and uploader.pending() == 0
    await uploader.close()


async def test_close_leaves_unsent_recordings_for_the_next_start(
    directory: RecordingDirectory,
) -> None:
    auth = FakeAuth()
    auth.down = True
    uploader = RecordingUploader(directory, auth.send, retry_min=10)
    await uploader.start()
    session = str(uuid.uuid4())
    directory.finished(session).write_bytes(b"recording")
    uploader.submit(session, complete=True)
    await eventually(lambda: auth.attempts == 1)
    await uploader.close(timeout=0.1)
    assert directory.finished(session).exists()
    auth.down = False
    again = RecordingUploader(directory, auth.send)
    assert await again.start() == 1
    await eventually(lambda: session in auth.stored)
    await again.close()


def raw_log(session_id: str, *outputs: tuple[float, bytes]) -> tuple[bytes, bytes]:
    """A raw session log of `outputs`, and the asciicast v2 auth must get for it."""
    header = Header(80, 24, 1_900_000_000.0, session_id, "alice", "root", "node-1")
    frames = b"".join(FRAME.pack(OUTPUT_TYPE, t, len(data)) + data for t, data in outputs)
    cast = header.to_line() + CastEncoder().encode([(t, "o", data) for t, data in outputs])
    return preamble(header) + frames, cast


async def test_a_raw_log_cut_off_by_a_crash_is_sent_as_asciicast_marked_incomplete(
    directory: RecordingDirectory,
) -> None:
    cut_off, finished = str(uuid.uuid4()), str(uuid.uuid4())
    log, cast = raw_log(cut_off, (0.1, b"before the "), (0.5, "crash \xe2\x9c".encode("latin-1")))
    torn = FRAME.pack(OUTPUT_TYPE, 0.7, 100) + b"never finished"
    directory.live(cut_off).write_bytes(log + torn)
    whole, whole_cast = raw_log(finished, *((n / 50, b"x" * 5000) for n in range(200)))
    directory.finished(finished).write_bytes(whole)
    auth = FakeAuth()
    uploader = RecordingUploader(directory, auth.send)
    assert await uploader.start() == 2
    await eventually(lambda: len(auth.stored) == 2)
    # Up to the last whole frame; the character the crash cut in two is U+FFFD.
    assert auth.stored[cut_off] == (cast + b'[0.500000, "o", "\\ufffd"]\n', True)
    assert auth.stored[finished] == (whole_cast, False)  # read and sent in chunks
    await eventually(lambda: not directory.live(cut_off).exists())
    await uploader.close()


async def test_a_raw_log_without_its_header_is_kept_aside(directory: RecordingDirectory) -> None:
    log, _ = raw_log(str(uuid.uuid4()))
    # Killed while the header was written, or between creating the file and writing.
    sessions = {str(uuid.uuid4()): log[:cut] for cut in (len(log) - 3, 5, 0)}
    for session, data in sessions.items():
        directory.live(session).write_bytes(data)
    auth = FakeAuth()
    uploader = RecordingUploader(directory, auth.send)
    assert await uploader.start() == 3
    for session, data in sessions.items():
        kept = directory.path / "rejected" / f"{session}.cast"
        await eventually(kept.exists)
        assert kept.read_bytes() == data
    assert auth.attempts == 0
    await uploader.close()


async def test_a_just_ended_session_is_sent_after_a_delay_or_at_close(
    directory: RecordingDirectory,
) -> None:
    auth = FakeAuth()
    uploader = RecordingUploader(directory, auth.send, after_end=0.2)
    await uploader.start()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for session in (first, second):
        directory.finished(session).write_bytes(raw_log(session)[0])
    uploader.ended(first, complete=True)
    await asyncio.sleep(0.1)
    assert auth.stored == {} and uploader.pending() == 1
    await eventually(lambda: first in auth.stored)
    uploader.ended(second, complete=True)
    await uploader.close()  # does not leave it for the next start
    assert second in auth.stored and not directory.finished(second).exists()


async def test_a_recording_over_the_limit_sends_its_start_and_keeps_the_whole_log(
    directory: RecordingDirectory,
) -> None:
    """A session that printed more than auth stores: the first whole events within the
    limit go up marked truncated, and the session log stays on the node, whole (what
    came after the limit is evidence too); a retry forever is what it did before."""
    limit = 60_000
    big, small = str(uuid.uuid4()), str(uuid.uuid4())
    # 0.2 s apart, so each output is an event of its own: 40 events of ~5 KB.
    log, cast = raw_log(big, *((n / 5, b"x" * 5000) for n in range(40)))
    directory.finished(big).write_bytes(log)
    small_log, small_cast = raw_log(small, (0.1, b"ok"))
    directory.finished(small).write_bytes(small_log)
    # Large enough on disk to be read through first, and within the limit as asciicast.
    medium = str(uuid.uuid4())
    medium_log, medium_cast = raw_log(medium, *((n / 5, b"y" * 5000) for n in range(8)))
    directory.finished(medium).write_bytes(medium_log)
    assert len(medium_log) * 8 > limit > len(medium_cast)
    auth = FakeAuth()
    uploader = RecordingUploader(directory, auth.send, max_bytes=limit)
    assert await uploader.start() == 3
    await eventually(lambda: len(auth.stored) == 3)
    assert auth.stored[medium] == (medium_cast, False) and medium not in auth.truncated
    sent, incomplete = auth.stored[big]
    assert big in auth.truncated and small not in auth.truncated
    assert len(sent) <= limit and cast.startswith(sent) and sent.endswith(b"\n")
    assert len(sent) > limit - 6_000  # every whole event that fits
    assert incomplete is False  # the session ended; auth marks it incomplete for truncated
    kept = directory.path / "rejected" / f"{big}.cast"
    await eventually(kept.exists)
    assert kept.read_bytes() == log and not directory.finished(big).exists()
    assert auth.stored[small] == (small_cast, False)
    await eventually(lambda: not directory.finished(small).exists())
    assert auth.attempts == 3
    await uploader.close()


async def test_a_file_that_cannot_be_kept_aside_does_not_stop_the_uploads_behind_it(
    directory: RecordingDirectory,
) -> None:
    (directory.path / "rejected").write_text("a file where the folder should be")
    auth = FakeAuth()
    auth.refuse = BadParameter("not an asciicast v2 header")
    uploader = RecordingUploader(directory, auth.send)
    await uploader.start()
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    directory.finished(bad).write_bytes(b"garbage")
    uploader.submit(bad, complete=True)
    await eventually(lambda: auth.attempts == 1)
    auth.refuse = None
    directory.finished(good).write_bytes(raw_log(good)[0])
    uploader.submit(good, complete=True)
    await eventually(lambda: good in auth.stored)
    assert directory.finished(bad).exists()  # left in place, for the next start
    await uploader.close()


async def test_leftovers_are_announced_again_before_they_are_sent(
    directory: RecordingDirectory,
) -> None:
    """Auth takes a recording only from the host that announced its session: what an
    earlier run left (made before hosts announced recordings, or announced so long ago
    that auth forgot) is announced again, ahead of its upload."""
    raw, legacy, broken = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    directory.live(raw).write_bytes(raw_log(raw, (0.1, b"cut off"))[0])
    legacy_cast = Header(80, 24, 1_900_000_000.0, legacy, "bob", "root", "node-1").to_line()
    directory.finished(legacy).write_bytes(legacy_cast)  # asciicast, from an older node
    directory.finished(broken).write_bytes(b"no header at all")
    auth = FakeAuth()
    announced: list[tuple[str, str, int]] = []

    def announce(header: Header) -> None:
        announced.append((header.session_id, header.user, auth.attempts))

    uploader = RecordingUploader(directory, auth.send, announce=announce)
    assert await uploader.start() == 3
    assert sorted(announced) == sorted([(raw, "alice", 0), (legacy, "bob", 0)])
    await eventually(lambda: {raw, legacy} <= set(auth.stored))
    await uploader.close()
