"""Auth's own audit events outlive an event store that does not take them.

Real processes on the real PostgreSQL: an admin locks a user while the audit table is
out of reach (renamed away under auth, as a dropped table or a revoked grant would
refuse it; the rest of the store works, so the lock itself is made). Before, the lock
was made and its `lock.created` event was lost with the failed insert: the admin saw an
error for a lock that existed, and the audit log never showed it. Now auth keeps the
event on its disk (`<data_dir>/audit_fallback/`), appends it to `events.log` at once,
says so in a metric, and stores it once the table takes writes again: while it runs,
and after a `kill -9` by the next start.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.postgres import PostgresServer, certgate_config
from tests.support.wait import eventually

TABLE = "certgate_audit_events"


@pytest.fixture(scope="module")
def schema(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_schema()
    yield name
    postgres_server.drop_schema(name)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, schema: str
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("audit-fallback")
    config = workdir / "certgate.yaml"
    config.write_text(certgate_config(postgres_server.conninfo(schema)))
    c = Cluster(workdir, roles="auth", extra_args=["--config", str(config)])
    c.start()
    yield c
    c.stop()


def take_table_away(postgres_server: PostgresServer, schema: str) -> None:
    postgres_server.sql(schema, f"ALTER TABLE {TABLE} RENAME TO {TABLE}_away")


def give_table_back(postgres_server: PostgresServer, schema: str) -> None:
    postgres_server.sql(schema, f"ALTER TABLE {TABLE}_away RENAME TO {TABLE}")


def stored_locks(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.cgctl("audit", "ls", "--event=lock.created", "--format=json", "--since=1h")
    return [event for event in json.loads(out.stdout) if event["event"] == "lock.created"]


def logged_locks(cluster: Cluster) -> list[dict[str, Any]]:
    lines = (cluster.data_dir / "log" / "events.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "lock.created"]


def held(cluster: Cluster) -> float:
    for line in cluster.diag("/metrics")[1].splitlines():
        if line.startswith("certgate_audit_events_held "):
            return float(line.split()[1])
    raise AssertionError("no certgate_audit_events_held in /metrics")


def held_files(cluster: Cluster) -> list[Path]:
    return sorted((cluster.data_dir / "audit_fallback").glob("[0-9]*.jsonl"))


def test_a_lock_made_while_the_audit_table_refuses_writes_is_logged_once_it_takes_them(
    cluster: Cluster, postgres_server: PostgresServer, schema: str
) -> None:
    take_table_away(postgres_server, schema)
    try:
        made = cluster.cgctl(
            "lock", "--force", "--user=carol", "--message=audit table away", check=False
        )
        assert made.returncode == 0, made.stderr
        assert [e["target"] for e in logged_locks(cluster)] == ["user=carol"]
        assert held(cluster) == 1
    finally:
        give_table_back(postgres_server, schema)
    # Stored by the retry, without a restart; in the log file once.
    eventually(lambda: held(cluster) == 0, timeout=30)
    assert [e["message"] for e in stored_locks(cluster)] == ["audit table away"]
    assert len(logged_locks(cluster)) == 1
    assert held_files(cluster) == []


def test_a_held_event_outlives_kill_9_and_is_stored_by_the_next_start(
    cluster: Cluster, postgres_server: PostgresServer, schema: str
) -> None:
    before = len(stored_locks(cluster))
    take_table_away(postgres_server, schema)
    try:
        made = cluster.cgctl(
            "lock", "--force", "--user=dave", "--message=then auth died", check=False
        )
        assert made.returncode == 0, made.stderr
        assert held(cluster) == 1
        assert cluster.process is not None
        cluster.process.send_signal(signal.SIGKILL)
        cluster.process.wait()
        assert len(held_files(cluster)) == 1
    finally:
        give_table_back(postgres_server, schema)
    cluster.start()
    stored = eventually(lambda: len(stored_locks(cluster)) > before and stored_locks(cluster))
    assert stored[0]["message"] == "then auth died"
    assert held_files(cluster) == []
    assert "Traceback" not in cluster.log.read_text()
