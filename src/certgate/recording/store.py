"""The recordings store seam: where auth keeps session recordings (DESIGN §5).

Auth code depends on `RecordingStore` only; `open_recording_store` (registry.py) picks
the implementation from `auth_service.recordings.uri`. Every implementation passes the
compliance suite in tests/recording/suite.py.

A recording is its cast file plus its `RecordingInfo`. Recordings are write-once: `put`
of an id already stored accepts the same file again (a node that retries after a lost
answer) and refuses other content with AlreadyExists; it returns only once both are
stored durably: the node deletes its copy on that answer.
Ids are checked (`check_recording_id`) before anything else, so no id names a path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol

from certgate.api.recording import RecordingInfo
from certgate.errors import NotFound

# Bytes per chunk when a recording is streamed.
CHUNK_SIZE = 64 * 1024
# The most recordings one list answers.
MAX_LIST = 10_000


@dataclass(frozen=True)
class RecordingQuery:
    """Which recordings to list: started in [since, until), of `user`, on `node`."""

    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    node: str | None = None
    limit: int = 1000

    def matches(self, info: RecordingInfo) -> bool:
        return (
            (self.since is None or info.start >= self.since)
            and (self.until is None or info.start < self.until)
            and (self.user is None or info.user == self.user)
            and (self.node is None or info.node == self.node)
        )


class RecordingStore(Protocol):
    async def put(self, info: RecordingInfo, source: bytes | IO[bytes]) -> RecordingInfo:
        """Store the cast file (bytes, or a binary file read to its end) and its info.

        Returns the info as stored (`size` set to the bytes stored). BadParameter for
        an invalid id; AlreadyExists if the id is stored with other content.
        """
        ...

    async def info(self, recording_id: str) -> RecordingInfo:
        """NotFound (`recording "x" not found`) if there is no such recording."""
        ...

    async def get(self, recording_id: str) -> bytes:
        """The whole cast file."""
        ...

    def stream(self, recording_id: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The cast file in chunks; NotFound from the first `anext` if it is absent."""
        ...

    async def search(self, query: RecordingQuery) -> list[RecordingInfo]:
        """Matching recordings, newest start first, at most `query.limit`."""
        ...

    async def delete(self, recording_id: str) -> None:
        """NotFound if there is no such recording."""
        ...

    async def check(self) -> str | None:
        """Whether the store can be used (the bucket exists and lets us in): None, or
        what is wrong in one line. Read-only."""
        ...

    async def close(self) -> None: ...


def not_found(recording_id: str) -> NotFound:
    return NotFound(f'recording "{recording_id}" not found')
