"""An operator runs certgate on PostgreSQL and an S3-compatible bucket (issue 13).

Real processes: `certgate start` (auth, proxy, node) configured with
`storage: {type: postgres}` and `recordings: {uri: s3://...}`, the session's real
PostgreSQL and moto's S3 server. A user logs in, runs a recorded command over SSH and
plays it back; the state, the audit log and the recording are where the config says
(and nothing went to the SQLite files a default start would make). A second auth
process on the same store serves the same users, and a lock made through it ends a
session held through the first one's proxy and node.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from tests.support.cluster import BIN, Cluster, User, cgsh_shell, run
from tests.support.ha import another_auth
from tests.support.postgres import PostgresServer, certgate_config
from tests.support.s3 import S3Server
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sessions as root need root")

RECORDED = """\
kind: role
metadata: {name: recorded}
spec:
  allow:
    logins: [root]
    node_labels: {"*": "*"}
  options: {record_session: {ssh: strict}}
"""


@pytest.fixture(scope="module")
def stores(postgres_server: PostgresServer, s3_server: S3Server) -> Iterator[tuple[str, str]]:
    schema = postgres_server.create_schema()
    yield schema, s3_server.create_bucket()
    postgres_server.drop_schema(schema)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    s3_server: S3Server,
    stores: tuple[str, str],
) -> Iterator[Cluster]:
    schema, bucket = stores
    workdir = tmp_path_factory.mktemp("ha")
    config = workdir / "certgate.yaml"
    recordings = f"  recordings:\n    uri: {json.dumps(s3_server.uri(bucket, 'cluster-a'))}\n"
    config.write_text(certgate_config(postgres_server.conninfo(schema), recordings))
    c = Cluster(workdir, roles="auth,proxy,node", extra_args=["--config", str(config)])
    c.start()
    c.cgctl("create", "-f", "-", input=RECORDED)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def bob(cluster: Cluster) -> User:
    user = cluster.add_user("bob", roles="recorded,auditor")
    cluster.login(user)
    return user


def test_login_session_and_replay_on_postgres_and_s3(
    cluster: Cluster,
    bob: User,
    postgres_server: PostgresServer,
    s3_server: S3Server,
    stores: tuple[str, str],
) -> None:
    schema, bucket = stores
    result = cluster.cgsh(bob, "ssh", "root@node-1", "echo ha-$((6*7))")
    assert "ha-42" in result.stdout

    def bobs_recording() -> dict[str, Any] | None:
        listed = json.loads(cluster.cgsh(bob, "recordings", "ls", "--format=json").stdout)
        return next((r for r in listed if r["user"] == "bob"), None)

    recording = eventually(bobs_recording)
    played = json.loads(cluster.cgsh(bob, "play", recording["id"], "--format=json").stdout)
    assert "ha-42" in "".join(e["data"] for e in played["events"] if e["type"] == "o")

    # The recording is in the bucket, under the configured prefix.
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="cluster-a/")
    keys = [entry["Key"] for entry in listed.get("Contents", [])]
    assert f"cluster-a/{recording['id']}.json" in keys

    # Users, roles and the CAs are in PostgreSQL; so is the audit log of the session.
    assert postgres_server.sql(schema, "SELECT 1 FROM certgate_kv WHERE key LIKE '/users/bob%'")

    def audited() -> list[tuple[Any, ...]]:
        return postgres_server.sql(
            schema,
            "SELECT event FROM certgate_audit_events WHERE data::jsonb ->> 'session_id' = %s",
            recording["id"],
        )

    assert {"session.start", "session.end"} <= {row[0] for row in eventually(audited)}
    audit = json.loads(cluster.cgctl("audit", "ls", "--user=bob", "--format=json").stdout)
    assert any(e.get("session_id") == recording["id"] for e in audit)

    # Nothing was kept in the SQLite files a default start makes.
    assert not (cluster.data_dir / "backend.db").exists()
    assert not (cluster.data_dir / "events.db").exists()
    assert not (cluster.data_dir / "recordings").exists()


@pytest.fixture(scope="module")
def second_auth(cluster: Cluster) -> Iterator[Path]:
    """Another auth process on the same store (another host, in production)."""
    config = next(arg for arg in cluster.extra_args if arg.endswith(".yaml"))
    with another_auth(cluster, config) as auth:
        yield auth.data_dir


def test_a_lock_made_through_one_auth_ends_a_session_held_through_the_other(
    cluster: Cluster, bob: User, second_auth: Path
) -> None:
    # The second auth serves what was made through the first.
    users = cluster_b_cgctl(second_auth, "users", "ls").stdout
    assert "bob" in users

    # bob's shell runs through the proxy and node attached to the first auth.
    child = cgsh_shell(bob.home)
    try:
        out = cluster_b_cgctl(
            second_auth, "lock", "--user=bob", "--message=from the other auth"
        ).stdout
        locked_at = time.monotonic()
        # The first auth learns of the lock from the store's watch and its proxy and node
        # end the session (the same path as a lock made through it, plus the feed).
        child.expect("locked: from the other auth")
        child.expect(pexpect.EOF)
        assert time.monotonic() - locked_at < 30  # generous: well before the cert expires
    finally:
        child.close()
    refused = cluster.cgsh(bob, "ssh", "root@node-1", "true", check=False)
    assert refused.returncode == 3 and "locked: from the other auth" in refused.stderr
    cluster.cgctl("rm", f"lock/{out.split(chr(39))[1]}")


def cluster_b_cgctl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "cgctl"), "--data-dir", str(data_dir), *args])


def test_a_missing_bucket_is_said_at_start_and_recordings_wait_on_the_node_until_it_works(
    tmp_path: Path, s3_server: S3Server
) -> None:
    # An operator who mistyped the bucket hears of it in the log as auth starts, not
    # at the first session's upload; logins and sessions are not held up by it, even
    # under `record_session: strict` (the node records to its disk first). Once the
    # bucket exists, the recording made meanwhile is uploaded and plays: none is lost.
    bucket = f"later-{uuid.uuid4().hex[:12]}"
    config = tmp_path / "certgate.yaml"
    config.write_text(
        f"version: v1\nauth_service:\n  recordings:\n    uri: {json.dumps(s3_server.uri(bucket))}\n"
    )
    c = Cluster(tmp_path, roles="auth,proxy,node", extra_args=["--config", str(config)])
    c.start()
    try:

        def said() -> list[str]:
            return [x for x in c.log.read_text().splitlines() if bucket in x]

        [line] = eventually(said, timeout=30)
        assert f'recordings bucket "{bucket}" does not exist' in line
        assert "session recordings cannot be stored" in line
        assert c.diag("/readyz")[0] == 200

        c.cgctl("create", "-f", "-", input=RECORDED)
        carol = c.add_user("carol", roles="recorded,auditor")
        c.login(carol)
        ran = c.cgsh(carol, "ssh", "root@node-1", "echo kept-$((6*7))")
        assert "kept-42" in ran.stdout
        eventually(lambda: "upload of recording" in c.log.read_text(), timeout=30)

        s3_server.client().create_bucket(Bucket=bucket)

        def listed() -> list[dict[str, Any]]:
            answer = c.cgsh(carol, "recordings", "ls", "--format=json", check=False)
            return json.loads(answer.stdout) if answer.returncode == 0 else []

        # The node retries with backoff (doubling from 1 s): within a minute here.
        [recording] = eventually(listed, timeout=90)
        played = json.loads(c.cgsh(carol, "play", recording["id"], "--format=json").stdout)
        assert "kept-42" in "".join(e["data"] for e in played["events"] if e["type"] == "o")
        assert "Traceback" not in c.log.read_text()
    finally:
        c.stop()
