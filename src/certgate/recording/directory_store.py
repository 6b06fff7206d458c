"""`RecordingStore` on a local directory (the default: `<auth data_dir>/recordings`).

    <root>/<id>.cast    the recording, as the node sent it
    <root>/<id>.json    its RecordingInfo
    <root>/.tmp/        files being written; renamed into place when whole

Each file is written to `.tmp` and fsynced, then the cast is linked into place (which
fails if a cast of that id exists: recordings are write-once; the same bytes again are
a retry and accepted, other bytes are refused with AlreadyExists) and the info renamed
after it; then the directory is fsynced: a listed recording always has its whole file,
and a recording is on disk before `put` returns (the node deletes its copy on that
answer). Several auth
processes may share the directory (renames are atomic). Listing reads every info file:
fine for thousands of recordings; an index is the next step beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from certgate.api.recording import RecordingInfo, check_recording_id
from certgate.errors import AlreadyExists, BadParameter, NotFound
from certgate.recording.store import CHUNK_SIZE, MAX_LIST, RecordingQuery, not_found


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)

    def _cast(self, recording_id: str) -> Path:
        return self.root / f"{check_recording_id(recording_id)}.cast"

    def _info(self, recording_id: str) -> Path:
        return self.root / f"{check_recording_id(recording_id)}.json"

    # ---- writing -------------------------------------------------------------------

    async def put(self, info: RecordingInfo, source: bytes | IO[bytes]) -> RecordingInfo:
        check_recording_id(info.id)
        return await asyncio.to_thread(self._put, info, source)

    def _put(self, info: RecordingInfo, source: bytes | IO[bytes]) -> RecordingInfo:
        cast_tmp = self._tmp / f"{info.id}.{uuid.uuid4().hex}.cast"
        info_tmp = cast_tmp.with_suffix(".json")
        cast = self._cast(info.id)
        try:
            size = _write_synced(cast_tmp, source)
            try:
                # Write-once: link() fails if the name exists, even when several
                # processes race for it, where rename() would replace.
                os.link(cast_tmp, cast)
            except FileExistsError:
                if not _same_content(cast_tmp, cast):
                    raise AlreadyExists(
                        f"recording {info.id} is already stored with other content: "
                        "recordings are write-once"
                    ) from None
                with contextlib.suppress(NotFound):
                    return _read_info(self._info(info.id), info.id)  # a retry: as stored
                # The first put stopped between its cast and its info: finish it.
            stored = info.model_copy(update={"size": size})
            _write_synced(info_tmp, json.dumps(stored.to_dict(), indent=1).encode())
            os.replace(info_tmp, self._info(info.id))
            _sync_dir(self.root)
        finally:
            cast_tmp.unlink(missing_ok=True)
            info_tmp.unlink(missing_ok=True)
        return stored

    async def delete(self, recording_id: str) -> None:
        info, cast = self._info(recording_id), self._cast(recording_id)

        def remove() -> None:
            if not info.exists():
                raise not_found(recording_id)
            info.unlink(missing_ok=True)  # first: it is what makes a recording listed
            cast.unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    # ---- reading -------------------------------------------------------------------

    async def info(self, recording_id: str) -> RecordingInfo:
        path = self._info(recording_id)
        return await asyncio.to_thread(_read_info, path, recording_id)

    async def get(self, recording_id: str) -> bytes:
        await self.info(recording_id)
        try:
            return await asyncio.to_thread(self._cast(recording_id).read_bytes)
        except FileNotFoundError:
            raise not_found(recording_id) from None

    async def stream(self, recording_id: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        await self.info(recording_id)
        try:
            file = await asyncio.to_thread(self._cast(recording_id).open, "rb")
        except FileNotFoundError:
            raise not_found(recording_id) from None
        try:
            while chunk := await asyncio.to_thread(file.read, chunk_size):
                yield chunk
        finally:
            file.close()

    async def search(self, query: RecordingQuery) -> list[RecordingInfo]:
        if not 1 <= query.limit <= MAX_LIST:
            raise BadParameter(f"limit must be between 1 and {MAX_LIST}, got {query.limit}")
        return await asyncio.to_thread(self._search, query)

    def _search(self, query: RecordingQuery) -> list[RecordingInfo]:
        found: list[RecordingInfo] = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(".json"):
                    continue
                try:
                    info = _read_info(Path(entry.path), name[: -len(".json")])
                except (BadParameter, OSError):
                    continue  # deleted meanwhile, or not ours
                if query.matches(info):
                    found.append(info)
        found.sort(key=lambda i: (i.start, i.id), reverse=True)
        return found[: query.limit]

    async def check(self) -> str | None:
        return None  # the constructor made the directory, or refused

    async def close(self) -> None:
        pass


def _read_info(path: Path, recording_id: str) -> RecordingInfo:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise not_found(recording_id) from None
    try:
        return RecordingInfo.from_dict(json.loads(text))
    except (ValueError, ValidationError) as exc:
        raise BadParameter(f"recording {recording_id} has unreadable metadata: {exc}") from exc


def _write_synced(path: Path, source: bytes | IO[bytes]) -> int:
    """Write `source` to a new file at `path` and fsync it; returns the bytes written."""
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        chunks = [source] if isinstance(source, bytes) else iter(lambda: source.read(1 << 20), b"")
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            size += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            chunk = fa.read(1 << 20)
            if chunk != fb.read(1 << 20):
                return False
            if not chunk:
                return True


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
