"""What is known about one session recording, as the store keeps it and `cgsh` lists it.

A recording's id is the id of the session it records (a UUID4 in its canonical, lower
case form). The id is also the file name wherever recordings are kept, so it is checked
before it comes near a path: nothing but the canonical UUID form passes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from certgate.api.meta import Model
from certgate.errors import BadParameter

# The largest recording auth stores, in bytes of asciicast. A session that printed more
# is sent up to its last whole event within this, marked `truncated`, and the node that
# recorded it keeps its whole session log (recordings/rejected/).
MAX_RECORDING_BYTES = 4 * 1024**3

_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def is_recording_id(value: str) -> bool:
    """Whether `value` is a session id (canonical lower-case UUID4): safe as a file name."""
    return bool(_ID.fullmatch(value))


def check_recording_id(value: str) -> str:
    """`value` if it is a valid recording id; BadParameter otherwise."""
    if not isinstance(value, str) or not is_recording_id(value):
        raise BadParameter(f'invalid recording id "{value}": recording ids are session UUIDs')
    return value


def _valid_id(value: str) -> str:
    if not is_recording_id(value):
        raise ValueError("must be a session id (a lower-case UUID4)")
    return value


RecordingId = Annotated[str, AfterValidator(_valid_id)]


class RecordingInfo(Model):
    """One stored recording: whose session it was, where, when and for how long.

    `incomplete` means the recording stops before the session did: the node stopped
    (crash, kill -9) before the session ended, so the recording stops where the last
    write before that did; or it is `truncated` too: the session printed more than
    MAX_RECORDING_BYTES, the recording holds the start, and the node that recorded it
    keeps the whole session log.
    """

    kind: str = "recording"
    version: str = "v1"
    id: RecordingId
    user: str
    login: str
    node: str
    session_kind: str = "shell"  # "shell" or "exec"
    command: str | None = None
    roles: list[str] = Field(default_factory=list)
    start: datetime
    duration: float = 0.0  # seconds, to the last recorded event
    incomplete: bool = False
    truncated: bool = False
    size: int = 0  # bytes of the cast file
    uploaded: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> RecordingInfo:
        return cls.model_validate(data)
