"""The S3 store: the compliance suite on moto's S3 server, plus multipart uploads,
streamed reads and the URI the registry takes."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest

from certgate.errors import AlreadyExists, BadParameter, ConnectionProblem
from certgate.recording.registry import open_recording_store
from certgate.recording.s3_store import MULTIPART_THRESHOLD, S3Store
from tests.support.net import free_port
from tests.support.s3 import S3Server

from .conftest import StoreTarget
from .suite import RecordingStoreSuite, cast, info


class TestS3Store(RecordingStoreSuite):
    @pytest.fixture
    def store_target(self, s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> StoreTarget:
        return StoreTarget(s3_server.uri(s3_bucket), tmp_path)


@pytest.fixture
async def s3_store(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> S3Store:
    store = open_recording_store(s3_server.uri(s3_bucket, "rec/x"), tmp_path)
    assert isinstance(store, S3Store)
    yield store  # type: ignore[misc]
    await store.close()


def parts_of(server: S3Server, bucket: str, key: str) -> int:
    """How many parts the object was uploaded in (a multipart ETag ends in -N)."""
    etag = server.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def data_keys(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix="rec/x/data/")
    return [entry["Key"] for entry in listed.get("Contents", [])]


async def test_a_large_recording_is_uploaded_in_parts_and_streamed(
    s3_store: S3Store, s3_server: S3Server, s3_bucket: str
) -> None:
    item = info()
    data = cast("y" * (MULTIPART_THRESHOLD + 3 * 1024 * 1024))  # over 8 MiB: two parts
    await s3_store.put(item, data)
    [key] = data_keys(s3_server, s3_bucket)
    assert parts_of(s3_server, s3_bucket, key) == 2
    # A small one goes in one request (the suite's own recordings are small).
    small = info()
    await s3_store.put(small, cast())
    small_key = next(k for k in data_keys(s3_server, s3_bucket) if small.id in k)
    assert parts_of(s3_server, s3_bucket, small_key) == 1
    # Played back in chunks as they arrive, never read whole first.
    chunks = [chunk async for chunk in s3_store.stream(item.id, 64 * 1024)]
    assert len(chunks) == -(-len(data) // (64 * 1024))
    assert max(len(chunk) for chunk in chunks) == 64 * 1024
    assert b"".join(chunks) == data


async def test_a_retry_or_a_refusal_leaves_one_file(
    s3_store: S3Store, s3_server: S3Server, s3_bucket: str
) -> None:
    item = info()
    await s3_store.put(item, cast("one"))
    await s3_store.put(item, cast("one"))  # the node's retry: accepted, not kept twice
    with pytest.raises(AlreadyExists):
        await s3_store.put(item, cast("two"))
    assert len(data_keys(s3_server, s3_bucket)) == 1
    assert await s3_store.get(item.id) == cast("one")
    await s3_store.delete(item.id)
    assert data_keys(s3_server, s3_bucket) == []


async def test_a_missing_bucket_or_server_is_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_recording_store(s3_server.uri("no-such-bucket"), tmp_path)
    try:
        # What auth says at start (daemon/auth_service.py), and at the first upload: as
        # unavailable (503), which a node retries, not as a refused recording.
        assert await store.check() == 'recordings bucket "no-such-bucket" does not exist'
        with pytest.raises(ConnectionProblem, match='bucket "no-such-bucket" does not exist'):
            await store.put(info(), cast())
    finally:
        await store.close()
    gone = f"s3://b/p?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    store = open_recording_store(gone, tmp_path)
    try:
        problem = await store.check()
        assert problem is not None and "unreachable" in problem and "\n" not in problem
        with pytest.raises(ConnectionProblem) as refused:
            await store.info(info().id)
        assert "\n" not in str(refused.value)
    finally:
        await store.close()


class _RedirectsEverything(http.server.BaseHTTPRequestHandler):
    """Not an S3 server: a web server that sends every request elsewhere (as a plain
    http:// port of certgate's proxy does)."""

    def _answer(self) -> None:
        self.send_response(301)
        self.send_header("Location", f"https://{self.headers.get('Host', 'x')}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_an_endpoint_that_is_no_s3_server_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "certgate-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "certgate-test")
    # botocore follows a 301 as S3's "wrong region" answer, asking the bucket's region
    # through the same redirect again: without care, until Python's recursion limit.
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RedirectsEverything)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{web.server_address[1]}"
    store = open_recording_store(f"s3://b/p?endpoint={endpoint}&region=us-east-1", tmp_path)
    try:
        problem = await store.check()
        assert problem is not None and "\n" not in problem
        assert f"{endpoint} does not answer as an S3 server" in problem
        with pytest.raises(ConnectionProblem, match="does not answer as an S3 server"):
            await store.put(info(), cast())
    finally:
        await store.close()
        web.shutdown()
        web.server_close()


@pytest.mark.parametrize(
    "uri",
    ["s3:///prefix", "s3://b/p?endpoint=ftp://x", "s3://b/p?secret=x", "s3://b?endpoint=localhost"],
)
def test_registry_refuses_bad_s3_uris(tmp_path: Path, uri: str) -> None:
    with pytest.raises(BadParameter):
        open_recording_store(uri, tmp_path)


async def test_an_info_put_whose_answer_was_lost_keeps_the_recording_playable(
    s3_store: S3Store, s3_server: S3Server, s3_bucket: str
) -> None:
    """The info PUT reaches S3 and is applied, but its answer is lost (a read timeout,
    a reset): botocore's retry of it meets the info it wrote itself. That is this upload,
    stored; before, the store took it for another upload's and deleted its own data."""
    lost: list[str] = []

    def lose_the_answer(response: Any, request_dict: Any, **_: Any) -> int | None:
        applied = response is not None and response[0].status_code == 200
        if not lost and applied and request_dict["url_path"].endswith(".json"):
            lost.append(request_dict["url_path"])
            return 0  # retry at once, as after a read timeout
        return None

    s3_store._client.meta.events.register_first("needs-retry.s3.PutObject", lose_the_answer)
    item = info()
    await s3_store.put(item, cast("kept"))
    assert lost  # the answer was lost, and the PUT sent again
    assert await s3_store.get(item.id) == cast("kept")
    assert len(data_keys(s3_server, s3_bucket)) == 1


async def test_an_upload_whose_info_cannot_be_written_leaves_no_data_behind(
    s3_store: S3Store, s3_server: S3Server, s3_bucket: str
) -> None:
    def refuse(params: Any, **_: Any) -> None:
        if params["Key"].endswith(".json"):  # the data goes in; its info does not
            raise ConnectionProblem("the bucket refused the info")

    s3_store._client.meta.events.register_first("before-parameter-build.s3.PutObject", refuse)
    with pytest.raises(ConnectionProblem):
        await s3_store.put(info(), cast("orphan"))
    assert data_keys(s3_server, s3_bucket) == []
