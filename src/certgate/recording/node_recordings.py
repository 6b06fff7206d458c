"""A node's session recordings: one place for the directory, writer thread and uploader.

    NodeRecordings(<node data_dir>/recordings, send)
      start()   create the directory, queue what an earlier run left (uploader.start)
      open()    a SessionRecorder for a new session (its file and header written now)
      close()   finish writes, give uploads a few seconds, stop; the rest go next start

Which sessions are recorded, and what happens when a recording fails, is the caller's
decision (the node agent reads it from the roles).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from certgate.recording.asciicast import Header
from certgate.recording.recorder import (
    FailureCallback,
    RecordingDirectory,
    RecordingWriter,
    SessionRecorder,
)
from certgate.recording.uploader import Announce, RecordingUploader, Send

log = logging.getLogger("certgate.recording")

CLOSE_UPLOAD_SECONDS = 5.0


class NodeRecordings:
    def __init__(self, path: Path, send: Send, announce: Announce | None = None) -> None:
        """`announce`: what an earlier run left is announced to auth again at start."""
        self.directory = RecordingDirectory(path)
        self.writer = RecordingWriter()
        self.uploader = RecordingUploader(self.directory, send, announce=announce)

    async def start(self) -> int:
        """Returns how many recordings from an earlier run were queued for upload."""
        return await self.uploader.start()

    def open(self, header: Header, on_failure: FailureCallback | None) -> SessionRecorder:
        """A recorder for a new session: OSError if its file cannot be created."""
        return SessionRecorder.open(
            header,
            self.directory,
            self.writer,
            on_ended=self.uploader.ended,
            on_failure=on_failure,
        )

    async def close(self) -> None:
        await self.writer.drain()
        await asyncio.sleep(0)  # let the last sessions' on_ended callbacks queue them
        await self.uploader.close(CLOSE_UPLOAD_SECONDS)
        self.writer.close()
