"""`RecordingStore` on an S3-compatible bucket (AWS S3, MinIO, Ceph, ...), for HA:
every auth process reads and writes the same recordings.

    s3://bucket/prefix?endpoint=https://s3.example.com&region=eu-west-1

    <prefix>/<id>.json               {"info": RecordingInfo, "object": "<data key>",
                                      "sha256": "<of the file>"}
    <prefix>/data/<id>/<random>.cast the recording, as the node sent it

Each `put` uploads the cast file under a key of its own (multipart above
MULTIPART_THRESHOLD, so a large recording never sits whole in memory, hashed as it
goes), then creates the info object that points to it, only if absent (S3's
conditional write, If-None-Match: *). Recordings are write-once: the info object is
what makes a recording listed and it always names a whole file; of two auth processes
storing one id at once exactly one wins, and the other's file is removed. A put that
finds the id taken is a node's retry if the SHA-256 matches (answered as stored), else
refused with AlreadyExists. S3 answers a PUT only once the object is durable, which
is what the node waits for before deleting its copy. (A put cut short between its
file and its info leaves that file unlisted in data/; nothing reads it.)

boto3 is synchronous: every call runs on this store's thread pool, never on the event
loop. Credentials come from boto3's usual places (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role); never from the URI.
Listing reads every info object (in parallel): fine for thousands of recordings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import ValidationError

from certgate.api.recording import RecordingInfo, check_recording_id
from certgate.errors import (
    AlreadyExists,
    BadParameter,
    CertgateError,
    CompareFailed,
    ConnectionProblem,
    NotFound,
)
from certgate.recording.store import CHUNK_SIZE, MAX_LIST, RecordingQuery, not_found

T = TypeVar("T")

# S3 takes parts of 5 MiB and more; above this a recording is uploaded in parts.
MULTIPART_THRESHOLD = 5 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
_THREADS = 16


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self._endpoint = endpoint or "the S3 endpoint"
        self.prefix = prefix.strip("/")
        self._base = f"{self.prefix}/" if self.prefix else ""
        config = Config(
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=_THREADS,
            # Most S3-compatible servers (and any endpoint given as an address) want
            # the bucket in the path rather than in the host name.
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        self._client: Any = _session().client(
            "s3", endpoint_url=endpoint, region_name=region, config=config
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=PART_SIZE,
            use_threads=False,
        )
        self._threads = ThreadPoolExecutor(_THREADS, thread_name_prefix="certgate-s3")

    def _info_key(self, recording_id: str) -> str:
        return f"{self._base}{check_recording_id(recording_id)}.json"

    async def _run(self, call: Callable[[], T]) -> T:
        """Run a boto3 call on the thread pool; its errors become certgate errors."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self.bucket) from exc
        except RecursionError:
            # botocore takes a 301 for S3's "ask the bucket's region" and asks through
            # the same redirect again: a web server, not S3, is at the endpoint.
            raise ConnectionProblem(
                f"recordings bucket {self.bucket}: {self._endpoint} does not answer as an"
                " S3 server does (it redirects every request): check the endpoint"
            ) from None

    # ---- writing -------------------------------------------------------------------

    async def put(self, info: RecordingInfo, source: bytes | IO[bytes]) -> RecordingInfo:
        info_key = self._info_key(info.id)
        data_key = f"{self._base}data/{info.id}/{uuid.uuid4().hex}.cast"
        reader = _CountingReader(io.BytesIO(source) if isinstance(source, bytes) else source)
        await self._run(
            lambda: self._client.upload_fileobj(
                reader, self.bucket, data_key, Config=self._transfer
            )
        )
        stored = info.model_copy(update={"size": reader.count})
        body = json.dumps(
            {"info": stored.to_dict(), "object": data_key, "sha256": reader.sha256.hexdigest()}
        ).encode()
        try:
            return await self._point_to(info.id, info_key, data_key, body, stored, reader)
        except Exception:
            # The object no info names is deleted. Not on a cancel: the info PUT may
            # still be under way on its thread and land after the delete.
            with contextlib.suppress(Exception):
                await self._unless_pointed_to(info.id, data_key)
            raise

    async def _point_to(
        self,
        recording_id: str,
        info_key: str,
        data_key: str,
        body: bytes,
        stored: RecordingInfo,
        reader: _CountingReader,
    ) -> RecordingInfo:
        """Write the info pointing at `data_key`, once; `stored` if this file is (or was
        already) the recording, else AlreadyExists."""
        for _ in range(3):
            try:
                # Write-once: created only if absent, atomically in S3 (If-None-Match),
                # so of two auth processes racing for one id exactly one wins.
                await self._run(
                    lambda: self._client.put_object(
                        Bucket=self.bucket,
                        Key=info_key,
                        Body=body,
                        ContentType="application/json",
                        IfNoneMatch="*",
                    )
                )
                return stored
            except CompareFailed:
                pass
            try:
                existing, pointed, digest = await self._read_pointer(recording_id)
            except NotFound:
                continue  # deleted meanwhile: try again
            if pointed == data_key:
                # Ours: the PUT was applied but its answer lost, and botocore's retry
                # of it found the info there.
                return existing
            # Taken by another upload: a retry of the same file is answered as stored.
            await self._run(lambda: self._client.delete_object(Bucket=self.bucket, Key=data_key))
            if digest == reader.sha256.hexdigest():
                return existing
            raise AlreadyExists(
                f"recording {recording_id} is already stored with other content:"
                " recordings are write-once"
            )
        raise ConnectionProblem(f"recording {recording_id}: the bucket kept changing, try again")

    async def _unless_pointed_to(self, recording_id: str, data_key: str) -> None:
        """Delete the object `data_key` unless the recording's info names it."""
        try:
            _, pointed, _ = await self._read_pointer(recording_id)
        except NotFound:
            pointed = None
        if pointed != data_key:
            await self._run(lambda: self._client.delete_object(Bucket=self.bucket, Key=data_key))

    async def delete(self, recording_id: str) -> None:
        _, data_key, _ = await self._read_pointer(recording_id)
        info_key = self._info_key(recording_id)
        # The info first: it is what makes a recording listed.
        await self._run(lambda: self._client.delete_object(Bucket=self.bucket, Key=info_key))
        await self._run(lambda: self._client.delete_object(Bucket=self.bucket, Key=data_key))

    # ---- reading -------------------------------------------------------------------

    async def info(self, recording_id: str) -> RecordingInfo:
        return (await self._read_pointer(recording_id))[0]

    async def get(self, recording_id: str) -> bytes:
        return b"".join([chunk async for chunk in self.stream(recording_id, 1 << 20)])

    async def stream(self, recording_id: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        _, data_key, _ = await self._read_pointer(recording_id)
        try:
            answer = await self._run(
                lambda: self._client.get_object(Bucket=self.bucket, Key=data_key)
            )
        except NotFound:
            raise not_found(recording_id) from None
        body = answer["Body"]
        try:
            while chunk := await self._run(lambda: body.read(chunk_size)):
                yield chunk
        finally:
            body.close()

    async def search(self, query: RecordingQuery) -> list[RecordingInfo]:
        if not 1 <= query.limit <= MAX_LIST:
            raise BadParameter(f"limit must be between 1 and {MAX_LIST}, got {query.limit}")
        ids = await self._run(self._list_ids)
        pointers = await asyncio.gather(*(self._pointer(i) for i in ids))
        found = [p for p in pointers if p is not None and query.matches(p)]
        found.sort(key=lambda i: (i.start, i.id), reverse=True)
        return found[: query.limit]

    def _list_ids(self) -> list[str]:
        ids: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._base, Delimiter="/"
        )
        for page in pages:
            for entry in page.get("Contents", []):
                name = entry["Key"][len(self._base) :]
                if name.endswith(".json"):
                    try:
                        ids.append(check_recording_id(name[: -len(".json")]))
                    except BadParameter:
                        continue  # not ours
        return ids

    async def _pointer(self, recording_id: str) -> RecordingInfo | None:
        """The info of a recording; None if there is none."""
        try:
            return (await self._read_pointer(recording_id))[0]
        except NotFound:
            return None

    async def _read_pointer(self, recording_id: str) -> tuple[RecordingInfo, str, str]:
        """The info, the data key and the SHA-256 of the file of a recording."""
        key = self._info_key(recording_id)
        try:
            answer = await self._run(lambda: self._client.get_object(Bucket=self.bucket, Key=key))
            raw = await self._run(answer["Body"].read)
        except NotFound:
            raise not_found(recording_id) from None
        try:
            document = json.loads(raw)
            return (
                RecordingInfo.from_dict(document["info"]),
                str(document["object"]),
                str(document["sha256"]),
            )
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise BadParameter(f"recording {recording_id} has unreadable metadata: {exc}") from exc

    async def check(self) -> str | None:
        try:
            await self._run(lambda: self._client.head_bucket(Bucket=self.bucket))
        except NotFound:  # a HEAD answer has no body: a bare 404, not NoSuchBucket
            return f'recordings bucket "{self.bucket}" does not exist'
        except CertgateError as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._client.close()


@functools.cache
def _session() -> Any:
    """One boto3 session per process: it loads the S3 API model once for all clients.
    Clients are made on the event loop's thread only (sessions are not thread-safe)."""
    return boto3.session.Session()


class _CountingReader(io.RawIOBase):
    """Reads through to `source`, counting and hashing the bytes: the size and digest
    of what was uploaded, without holding it."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self.count = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        self.sha256.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _translate(exc: ClientError | BotoCoreError, bucket: str) -> CertgateError:
    # A missing bucket, refused access or missing credentials are the store's state, which
    # an operator fixes, not a fault of the request: ConnectionProblem (503), so a node
    # keeps the recording and retries rather than setting it aside as refused.
    if isinstance(exc, NoCredentialsError):
        return ConnectionProblem(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            " (or ~/.aws/credentials, or an instance role) for the auth service"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"not found in bucket {bucket}")
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return CompareFailed(f"changed meanwhile in bucket {bucket}")
        if code == "NoSuchBucket":
            return ConnectionProblem(f'recordings bucket "{bucket}" does not exist')
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return ConnectionProblem(f'recordings bucket "{bucket}" refused access: {code}')
        return ConnectionProblem(f"recordings bucket {bucket}: {code or exc}")
    return ConnectionProblem(f"recordings bucket {bucket} unreachable: {exc}")


def parse_s3_uri(uri: str) -> S3Store:
    """`s3://bucket/prefix?endpoint=...&region=...` -> the store (no I/O yet)."""
    parts = urlsplit(uri)
    if not parts.netloc:
        raise BadParameter(f'recordings uri "{uri}": name the bucket, s3://bucket/prefix')
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - {"endpoint", "region"})
    if unknown:
        raise BadParameter(
            f'recordings uri "{uri}": unknown option "{unknown[0]}" (use endpoint, region)'
        )
    endpoint = options.get("endpoint", [""])[-1] or None
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise BadParameter(f'recordings uri "{uri}": endpoint must be an http(s):// URL')
    region = options.get("region", [""])[-1] or None
    return S3Store(parts.netloc, parts.path, endpoint=endpoint, region=region)
