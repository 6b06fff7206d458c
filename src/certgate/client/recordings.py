"""Session recordings from the user's side: list them, fetch one, play it back.

    list_recordings(api, since=, user=, node=)  GET /v1/recordings   (through the proxy)
    fetch_recording(api, id)                    GET /v1/recordings/{id} and .../cast
    play(events, write, speed=, skip_idle=)     original timing, scaled; pure but for sleep

What a user may list and read is auth's decision (their own sessions, or everyone's
with a role rule on `session`); this module only asks.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from certgate.api.recording import RecordingInfo, is_recording_id
from certgate.client.cluster import ClusterAPI
from certgate.client.names import is_id_prefix, resolve_prefix
from certgate.client.times import parse_since
from certgate.errors import BadParameter, NotFound
from certgate.recording.asciicast import OUTPUT, CastReader, Event

# A prefix is looked up among this many of the newest recordings.
MAX_PREFIX_SCAN = 1000
# With skip_idle, no pause in playback is longer than this (seconds).
IDLE_CAP = 0.5


def list_recordings(
    api: ClusterAPI,
    *,
    since: str | None = None,
    user: str | None = None,
    node: str | None = None,
    limit: int = 1000,
) -> list[RecordingInfo]:
    params = {
        k: v
        for k, v in {
            "since": parse_since(since),
            "user": user,
            "node": node,
            "limit": str(limit),
        }.items()
        if v
    }
    answer = api.call("GET", "/recordings", params=params)
    return [RecordingInfo.from_dict(item) for item in answer or []]


@dataclass(frozen=True)
class Recording:
    info: RecordingInfo
    # The cast file, in a temporary file: a long session's recording can be large.
    file: BinaryIO

    def reader(self) -> CastReader:
        """A reader from the start of the file (binary lines split at "\n" only)."""
        self.file.seek(0)
        return CastReader(self.file)

    def close(self) -> None:
        self.file.close()


def _checked(api: ClusterAPI, recording_id: str) -> str:
    """The full id: as given, or the one recording whose id starts with it (as git
    takes commits). Checked here, so nothing but an id ever becomes part of the URL."""
    if is_recording_id(recording_id):
        return recording_id
    if not is_id_prefix(recording_id):
        raise NotFound(f'recording "{recording_id}" not found')
    ids = [info.id for info in list_recordings(api, limit=MAX_PREFIX_SCAN)]
    try:
        return resolve_prefix(ids, recording_id, "recording")
    except NotFound:
        if len(ids) < MAX_PREFIX_SCAN:
            raise
        # Older ones were not looked at: the whole id finds them.
        raise NotFound(
            f'recording "{recording_id}" not found among the {MAX_PREFIX_SCAN} newest '
            "you can list: give its whole id"
        ) from None


def fetch_info(api: ClusterAPI, recording_id: str) -> RecordingInfo:
    full_id = _checked(api, recording_id)
    return RecordingInfo.from_dict(api.call("GET", f"/recordings/{full_id}"))


def fetch_recording(api: ClusterAPI, recording_id: str) -> Recording:
    """The recording, downloaded to a temporary file (gone when closed)."""
    info = fetch_info(api, recording_id)
    spool = tempfile.TemporaryFile()
    try:
        api.download(f"/recordings/{info.id}/cast", spool)
    except BaseException:
        spool.close()
        raise
    return Recording(info, spool)


def play(
    events: Iterable[Event],
    write: Callable[[str], None],
    *,
    speed: float = 1.0,
    skip_idle: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Write each output event's text at its time, divided by `speed`.

    With `skip_idle`, pauses longer than IDLE_CAP are cut to IDLE_CAP. Resize events
    are not replayed (the terminal playing back has its own size).
    """
    if speed <= 0:
        raise BadParameter(f"speed must be more than 0, got {speed}")
    start = clock()
    skipped = 0.0
    previous = 0.0
    for event in events:
        gap = event.time - previous
        previous = event.time
        if skip_idle and gap > IDLE_CAP:
            skipped += gap - IDLE_CAP
        due = (event.time - skipped) / speed
        delay = due - (clock() - start)
        if delay > 0:
            sleep(delay)
        if event.type == OUTPUT:
            write(event.data)


def as_json(recording: Recording) -> dict[str, Any]:
    """The recording's info, header and events, and where it is damaged (or null)."""
    reader = recording.reader()
    events = [event.to_dict() for event in reader.events()]
    return {
        "id": recording.info.id,
        "info": recording.info.to_dict(),
        "header": reader.header.to_dict(),
        "events": events,
        "damage": reader.damage,
    }


def format_seconds(seconds: float) -> str:
    """`42s`, `3m05s`, `2h01m` for listings; `?` for what is no finite duration (auth
    stored NaN and Infinity before it refused them)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
