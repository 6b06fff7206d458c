"""Recording uploads and reads against a real auth server in this process (over HTTP,
without TLS: the caller is named by a test header instead of a certificate), from the
attacker's side: who may upload a session's recording, what one upload may cost auth,
what a broken file is refused as, and what reading one leaves in the audit log."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from certgate.api.identity import SYSTEM_KUBE, SYSTEM_NODE, SYSTEM_PROXY, Identity
from certgate.api.kube_cluster import KubeCluster, KubeClusterSpec
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.auth import http_recordings
from certgate.auth.http import AuthAPI
from certgate.auth.server import AuthServer
from certgate.recording.directory_store import DirectoryStore
from tests.support.auth_server import started_auth_server

WHO = "X-Test-Caller"
CALLERS = {
    "db-1": Identity("db-1", roles=(SYSTEM_NODE,), kind="service"),
    # A proxy and a kube service that joined under the node's name: names are unique
    # only within one role.
    "proxy-db-1": Identity("db-1", roles=(SYSTEM_PROXY,), kind="service"),
    "kube-db-1": Identity("db-1", roles=(SYSTEM_KUBE,), kind="service"),
    "evil": Identity("evil", roles=(SYSTEM_NODE,), kind="service"),
    "proxy": Identity("proxy-1", roles=(SYSTEM_PROXY,), kind="service"),
    "kube-a": Identity("kube-a", roles=(SYSTEM_KUBE,), kind="service"),
    "kube-evil": Identity("kube-evil", roles=(SYSTEM_KUBE,), kind="service"),
    "alice": Identity("alice", roles=("access",), kind="user"),
    "bob": Identity("bob", roles=("access",), kind="user"),
}


class _TestAuthAPI(AuthAPI):
    def caller(self, request: web.Request) -> Identity | None:
        return CALLERS.get(request.headers.get(WHO, ""))


@dataclass
class Auth:
    server: AuthServer
    client: TestClient[Any, Any]
    dir: Path

    async def call(self, who: str, method: str, path: str, **kwargs: Any) -> ClientResponse:
        return await self.client.request(method, path, headers={WHO: who}, **kwargs)

    async def announce(self, who: str, session_id: str, node: str, user: str = "alice") -> None:
        """What a host's recording hook sends as it opens a recording."""
        fields = {"session_id": session_id, "user": user, "login": "root", "kind": "shell"}
        event = {"event": "session.recording.start", "fields": {**fields, "node": node}}
        answer = await self.call(who, "POST", "/v1/events", json={"events": [event]})
        assert answer.status == 204, await answer.text()

    async def track(self, who: str, session_id: str, node: str) -> None:
        """What a host sends as a terminal session starts (GET /v1/sessions shows it)."""
        tracker = {
            "kind": "session_tracker",
            "version": "v1",
            "metadata": {"name": session_id},
            "spec": {"session_kind": "shell", "user": "alice", "login": "root", "node": node,
                     "roles": ["access"], "started": datetime.now(UTC).isoformat()},
        }  # fmt: skip
        answer = await self.call(who, "POST", "/v1/sessions", json={"put": [tracker]})
        assert answer.status == 204, await answer.text()

    async def upload(self, who: str, session_id: str, body: Any) -> ClientResponse:
        return await self.call(who, "PUT", f"/v1/recordings/{session_id}", data=body)

    async def events(self, event: str) -> list[dict[str, Any]]:
        found, _ = await self.server.audit.search(event_types=[event])
        return found


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[Auth]:
    async with started_auth_server(tmp_path) as server:
        await server.add_user("alice", ["access"], {}, "admin")
        await server.add_user("bob", ["access"], {}, "admin")
        api = _TestAuthAPI(server, recordings=DirectoryStore(tmp_path / "recordings"))
        async with TestClient(TestServer(api.app())) as client:
            yield Auth(server, client, tmp_path)


def cast(session_id: str, node: str, *events: Any, user: str = "alice", **header: Any) -> bytes:
    meta = {"session_id": session_id, "user": user, "login": "root", "node": node,
            "roles": ["access"], "kind": "shell", "command": None}  # fmt: skip
    first = {"version": 2, "width": 80, "height": 24, "timestamp": 1764000000, "certgate": meta}
    first.update(header)
    lines = [json.dumps(first)] + [json.dumps(event) for event in events]
    return ("\n".join(lines) + "\n").encode()


def new_id() -> str:
    return str(uuid.uuid4())


# ---- only the host that ran the session uploads its recording ---------------------------


async def test_a_proxy_named_like_a_node_cannot_upload_that_nodes_session(auth: Auth) -> None:
    session = new_id()
    await auth.track("db-1", session, "db-1")
    listed = await auth.call("proxy-db-1", "GET", "/v1/sessions")
    assert [s["id"] for s in await listed.json()] == [session]  # proxies see live sessions
    fake = cast(session, "db-1", [0.1, "o", "$ ls\r\n"], [1.0, "m", "session ended"])
    refused = await auth.upload("proxy-db-1", session, fake)
    assert refused.status == 403, await refused.text()
    # Nor under a kube service of that name.
    assert (await auth.upload("kube-db-1", session, fake)).status == 403
    # The node's own upload, once its session ended, is the one stored.
    ended = [9.0, "m", "session ended"]
    real = cast(session, "db-1", [0.1, "o", "# rm -rf /var/lib/db\r\n"], ended)
    stored = await auth.upload("db-1", session, real)
    assert stored.status == 200, await stored.text()
    assert (auth.dir / "recordings" / f"{session}.cast").read_bytes() == real
    [upload] = await auth.events("session.upload")
    assert upload["server"] == "db-1" and upload["duration"] == 9.0


async def test_a_rogue_node_cannot_take_a_session_id_it_learned(auth: Auth) -> None:
    session = new_id()
    await auth.announce("db-1", session, "db-1")
    fake = cast(session, "evil", [0.1, "o", "ls\r\n"])
    assert (await auth.upload("evil", session, fake)).status == 403
    # Announcing the session itself afterwards claims nothing: the first host holds it.
    await auth.announce("evil", session, "evil")
    assert (await auth.upload("evil", session, fake)).status == 403
    real = cast(session, "db-1", [0.1, "o", "rm -rf /data\r\n"])
    assert (await auth.upload("db-1", session, real)).status == 200
    assert (auth.dir / "recordings" / f"{session}.cast").read_bytes() == real


async def test_the_header_must_name_the_announced_node_and_user(auth: Auth) -> None:
    session = new_id()
    await auth.announce("db-1", session, "db-1", user="alice")
    assert (await auth.upload("db-1", session, cast(session, "db-1", user="bob"))).status == 403
    assert (await auth.upload("db-1", session, cast(session, "db-1"))).status == 200


async def test_a_kube_service_uploads_only_for_clusters_it_announced(auth: Auth) -> None:
    def cluster(name: str) -> KubeCluster:
        return KubeCluster(metadata=Metadata(name=name), spec=KubeClusterSpec(addr="10.0.0.1:3027"))

    minute = timedelta(minutes=1)
    await auth.server.kube_heartbeat(CALLERS["kube-a"], cluster("prod"), minute)
    # A "cluster" named like a node gives no hold on that node's sessions.
    await auth.server.kube_heartbeat(CALLERS["kube-evil"], cluster("db-1"), minute)
    node_session = new_id()
    await auth.announce("db-1", node_session, "db-1")
    forged = cast(node_session, "db-1", [0.1, "o", "forged"])
    assert (await auth.upload("kube-evil", node_session, forged)).status == 403
    # The kube service's own exec session on its cluster: stored.
    exec_session = new_id()
    await auth.announce("kube-a", exec_session, "prod")
    assert (await auth.upload("kube-a", exec_session, cast(exec_session, "prod"))).status == 200
    # A session it claims on a cluster it does not serve is not its to upload.
    other = new_id()
    await auth.announce("kube-a", other, "staging")
    assert (await auth.upload("kube-a", other, cast(other, "staging"))).status == 404


async def test_a_proxy_uploads_the_sessions_of_agentless_nodes_only(auth: Auth) -> None:
    spec = NodeSpec(addr="10.0.0.2:22", sub_kind="openssh")
    await auth.server.put_resource(
        Node(metadata=Metadata(name="legacy-1"), spec=spec), "admin", upsert=False
    )
    session = new_id()
    await auth.track("proxy", session, "legacy-1")
    await auth.announce("proxy", session, "legacy-1")
    assert (await auth.upload("proxy", session, cast(session, "legacy-1"))).status == 200
    not_agentless = new_id()
    await auth.announce("proxy", not_agentless, "db-1")
    answer = await auth.upload("proxy", not_agentless, cast(not_agentless, "db-1"))
    assert answer.status == 404


async def test_an_upload_ahead_of_its_announcement_is_retried_not_lost(auth: Auth) -> None:
    """An exec session has no tracker: its announcement alone says whose it is, and it
    may reach auth after the upload's first try (the spool was behind)."""
    session = new_id()
    body = cast(session, "db-1", [0.5, "o", "out"], [0.7, "m", "session ended"])
    early = await auth.upload("db-1", session, body)
    assert early.status == 404  # the uploader retries NotFound
    await auth.announce("db-1", session, "db-1")
    assert (await auth.upload("db-1", session, body)).status == 200
    # A retry whose answer was lost is accepted again; other content is not.
    assert (await auth.upload("db-1", session, body)).status == 200
    assert (await auth.upload("db-1", session, cast(session, "db-1"))).status == 409


# ---- what one upload may cost auth ---------------------------------------------------


class Stalled:
    """A request body that sends `first` and then waits until released."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.sent = asyncio.Event()
        self.release = asyncio.Event()

    async def body(self) -> AsyncIterator[bytes]:
        yield self.first
        self.sent.set()
        await self.release.wait()


async def _in_background(call: Awaitable[ClientResponse]) -> asyncio.Task[ClientResponse]:
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0)
    return task


async def test_ownership_is_checked_before_the_body_is_taken(auth: Auth) -> None:
    session = new_id()
    await auth.announce("db-1", session, "db-1")
    # The rest of this body never comes: the refusal must not wait for it.
    stalled = Stalled(cast(session, "db-1") + b"x" * 100_000)
    try:
        async with asyncio.timeout(10):
            answer = await auth.upload("evil", session, stalled.body())
        assert answer.status == 403
    finally:
        stalled.release.set()


async def test_a_tail_of_garbage_is_refused_while_auth_answers_others(auth: Auth) -> None:
    session = new_id()
    await auth.announce("db-1", session, "db-1")
    pinged = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield cast(session, "db-1")
        for _ in range(5):
            yield b"x\n" * (512 * 1024)  # 5 MiB of lines that are no events
        await pinged.wait()  # the upload stays in progress until auth answered a ping

    upload = await _in_background(auth.upload("db-1", session, body()))
    ping = await auth.call("db-1", "GET", "/v1/ping")
    assert ping.status == 200
    pinged.set()
    answer = await upload
    assert answer.status == 400
    assert "does not end with asciicast v2 events" in (await answer.json())["message"]


async def test_one_service_holds_at_most_a_few_uploads_at_once(auth: Auth) -> None:
    sessions = [new_id() for _ in range(http_recordings.UPLOADS_PER_CALLER)]
    stalled = [Stalled(cast(s, "db-1")) for s in sessions]
    tasks = []
    try:
        for session, body in zip(sessions, stalled, strict=True):
            await auth.announce("db-1", session, "db-1")
            tasks.append(await _in_background(auth.upload("db-1", session, body.body())))
        extra = new_id()  # not announced: 404 until the stalled uploads hold every slot
        async with asyncio.timeout(10):
            while (answer := await auth.upload("db-1", extra, cast(extra, "db-1"))).status != 429:
                assert answer.status == 404
        assert not any(task.done() for task in tasks)
        # Another service is not held up by it.
        mine = new_id()
        await auth.announce("evil", mine, "evil")
        assert (await auth.upload("evil", mine, cast(mine, "evil"))).status == 200
    finally:
        for body in stalled:
            body.release.set()
        answers = await asyncio.gather(*tasks)
    assert [a.status for a in answers] == [200] * len(sessions)
    await auth.announce("db-1", extra, "db-1")
    assert (await auth.upload("db-1", extra, cast(extra, "db-1"))).status == 200


async def test_a_stalled_body_is_cut_off(auth: Auth, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_recordings, "READ_TIMEOUT", 0.3)
    session = new_id()
    await auth.announce("db-1", session, "db-1")
    stalled = Stalled(cast(session, "db-1", [0.5, "o", "a"]))
    try:
        async with asyncio.timeout(10):
            answer = await auth.upload("db-1", session, stalled.body())
        assert answer.status == 400
        assert "stalled" in (await answer.json())["message"]
    finally:
        stalled.release.set()


# ---- broken files are a 400 with a reason, never a stored NaN or a 500 -------------------

BROKEN: dict[str, Callable[[str], bytes]] = {
    "NaN event time": lambda s: cast(s, "db-1") + b'[NaN, "o", "x"]\n',
    "Infinity event time": lambda s: cast(s, "db-1") + b'[Infinity, "o", "x"]\n',
    "overflowing event time": lambda s: cast(s, "db-1") + b'[1e400, "o", "x"]\n',
    "timestamp far ahead": lambda s: cast(s, "db-1", timestamp=1e20),
    "timestamp far back": lambda s: cast(s, "db-1", timestamp=-1e12),
    "NaN start": lambda s: cast(s, "db-1").replace(b'"command": null', b'"start": NaN'),
    "deeply nested header": lambda s: b"[" * 100_000 + b"\n",
    "nested header": lambda s: cast(s, "db-1", env={"a": json.loads("[" * 40 + "]" * 40)}),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_broken_recording_is_refused_with_a_reason(auth: Auth, case: str) -> None:
    session = new_id()
    await auth.announce("db-1", session, "db-1")
    answer = await auth.upload("db-1", session, BROKEN[case](session))
    assert answer.status == 400, await answer.text()
    message = (await answer.json())["message"]
    assert message and "\n" not in message
    listed = await auth.call("alice", "GET", "/v1/recordings")
    assert listed.status == 200 and await listed.json() == []


# ---- reading ---------------------------------------------------------------------


async def _stored(auth: Auth) -> str:
    session = new_id()
    await auth.announce("db-1", session, "db-1")
    body = cast(session, "db-1", [0.5, "o", "secret\r\n"])
    assert (await auth.upload("db-1", session, body)).status == 200
    return session


async def test_playing_a_recording_is_audited_once(auth: Auth) -> None:
    session = await _stored(auth)
    info = await auth.call("alice", "GET", f"/v1/recordings/{session}")
    assert info.status == 200
    assert await auth.events("session.recording.access") == []  # its info is no playback
    cast_file = await auth.call("alice", "GET", f"/v1/recordings/{session}/cast")
    assert cast_file.status == 200 and b"secret" in await cast_file.read()
    [access] = await auth.events("session.recording.access")
    assert (access["user"], access["session_id"], access["session_user"], access["node"]) == (
        "alice", session, "alice", "db-1",
    )  # fmt: skip


async def test_a_recording_one_may_not_read_is_not_found(auth: Auth) -> None:
    session = await _stored(auth)
    missing = new_id()
    for path in (f"/v1/recordings/{session}", f"/v1/recordings/{session}/cast"):
        answer = await auth.call("bob", "GET", path)
        assert answer.status == 404
        message = (await answer.json())["message"]
        assert "alice" not in message
        absent = await auth.call("bob", "GET", path.replace(session, missing))
        assert (await absent.json())["message"] == message.replace(session, missing)
    assert await auth.events("session.recording.access") == []
