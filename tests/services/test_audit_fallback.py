"""Auth's own audit events survive an event store that does not take them
(services/audit_fallback.py), on the real SQLite event store.

The store fails for real: another connection renames its table away, so every insert
fails as it would with the audit table dropped or refused; renaming it back heals it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from certgate.backend.events_sqlite import SQLiteEventStore
from certgate.errors import CertgateError
from certgate.services.audit import AuditLog
from certgate.services.audit_fallback import REFUSED, RETRY_BATCH, AuditFallback
from tests.support.wait import eventually_async


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    events = await SQLiteEventStore.open(tmp_path / "events.db")
    yield events
    await events.close()


class TableSwitch:
    """Takes the event store's table away and gives it back, from another connection."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def _run(self, statement: str) -> None:
        with sqlite3.connect(self._path) as conn:
            conn.execute(statement)

    def take_away(self) -> None:
        self._run("ALTER TABLE audit_events RENAME TO audit_events_away")

    def give_back(self) -> None:
        self._run("ALTER TABLE audit_events_away RENAME TO audit_events")


@pytest.fixture
def table(tmp_path: Path) -> Iterator[TableSwitch]:
    yield TableSwitch(tmp_path / "events.db")


def audit_log(tmp_path: Path, store: SQLiteEventStore) -> AuditLog:
    fallback = AuditFallback(tmp_path / "fallback", store, retry_first=0.05, retry_max=0.2)
    return AuditLog(store, tmp_path / "log" / "events.log", fallback=fallback)


async def stored_uids(store: SQLiteEventStore) -> list[str]:
    events, _ = await store.search(order="asc", limit=1000)
    return [event["uid"] for event in events]


def held_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "fallback").glob("*.jsonl") if p.name != REFUSED]


async def test_an_event_the_store_does_not_take_is_kept_and_stored_once_it_does(
    tmp_path: Path, store: SQLiteEventStore, table: TableSwitch
) -> None:
    audit = audit_log(tmp_path, store)
    await audit.start()
    table.take_away()
    # The lock was made already: its event must not go with the failed write.
    lock = await audit.emit("lock.created", user="admin", target="bob")
    assert audit.held == 1
    (line,) = (tmp_path / "log" / "events.log").read_text().splitlines()
    assert json.loads(line)["uid"] == lock["uid"]  # log shippers see it at once
    (held,) = held_files(tmp_path)
    assert held.stat().st_mode & 0o777 == 0o600
    assert json.loads(held.read_text())["uid"] == lock["uid"]

    table.give_back()
    await eventually_async(lambda: audit.held == 0, timeout=5)
    assert await stored_uids(store) == [lock["uid"]]
    assert held_files(tmp_path) == []
    # Once in the log file: the retry does not append it again.
    assert len((tmp_path / "log" / "events.log").read_text().splitlines()) == 1
    await audit.close()


async def test_the_first_write_the_store_takes_has_the_held_events_retried_at_once(
    tmp_path: Path, store: SQLiteEventStore, table: TableSwitch
) -> None:
    fallback = AuditFallback(tmp_path / "fallback", store, retry_first=60, retry_max=60)
    audit = AuditLog(store, tmp_path / "log" / "events.log", fallback=fallback)
    table.take_away()
    first = await audit.emit("lock.created", user="admin", target="bob")
    table.give_back()
    second = await audit.emit("lock.deleted", user="admin", target="bob")
    # Not a minute later: the store taking `second` woke the retry.
    await eventually_async(lambda: audit.held == 0, timeout=5)
    assert sorted(await stored_uids(store)) == sorted([first["uid"], second["uid"]])
    await audit.close()


async def test_an_event_a_node_sent_is_not_held_its_node_keeps_it(
    tmp_path: Path, store: SQLiteEventStore, table: TableSwitch
) -> None:
    audit = audit_log(tmp_path, store)
    table.take_away()
    event = {"event": "exec", "code": "T3002I", "time": "2030-01-01T00:00:00+00:00", "uid": "n1"}
    with pytest.raises(CertgateError):
        await audit.record(event)
    assert audit.held == 0 and held_files(tmp_path) == []
    await audit.close()


async def test_events_left_by_an_auth_process_that_died_are_stored_by_the_next(
    tmp_path: Path, store: SQLiteEventStore, table: TableSwitch
) -> None:
    first = audit_log(tmp_path, store)
    table.take_away()
    kept = [await first.emit("user.create", user="admin", name=f"u{i}") for i in range(3)]
    # Its file, locked by a live process, is not another process's to claim.
    other = audit_log(tmp_path, store)
    await other.start()
    assert other.held == 0
    await first.close()  # gone: its lock goes with it, the file stays
    await other.close()
    table.give_back()

    after = audit_log(tmp_path, store)
    await after.start()
    assert after.held == 3
    await eventually_async(lambda: after.held == 0, timeout=5)
    assert sorted(await stored_uids(store)) == sorted(e["uid"] for e in kept)
    assert held_files(tmp_path) == []
    await after.close()


async def test_a_malformed_left_event_is_set_aside_and_the_others_are_stored(
    tmp_path: Path, store: SQLiteEventStore
) -> None:
    good = {"event": "user.delete", "code": "T1004I", "time": "2030-01-01T00:00:00+00:00"}
    directory = tmp_path / "fallback"
    directory.mkdir()
    lines = [
        json.dumps({**good, "uid": "a"}),
        json.dumps({**good, "uid": "b", "time": "yesterday"}),  # the store refuses it
        json.dumps({**good, "uid": "c"}),
        json.dumps({**good, "uid": "d"})[:20],  # torn: its writer died mid-line
    ]
    (directory / "99-left.jsonl").write_text("\n".join(lines))

    audit = audit_log(tmp_path, store)
    await audit.start()
    await eventually_async(lambda: audit.held == 0, timeout=5)
    assert await stored_uids(store) == ["a", "c"]
    (refused,) = (directory / REFUSED).read_text().splitlines()
    assert json.loads(refused)["event"]["uid"] == "b"
    assert "RFC 3339" in json.loads(refused)["reason"]
    await audit.close()


async def test_without_a_fallback_the_emitter_hears_the_store_failure(
    tmp_path: Path, store: SQLiteEventStore, table: TableSwitch
) -> None:
    audit = AuditLog(store, tmp_path / "log" / "events.log")
    table.take_away()
    with pytest.raises(CertgateError, match="no such table"):
        await audit.emit("lock.created", user="admin", target="bob")
    await audit.close()


async def test_a_long_outages_file_is_stored_a_batch_at_a_time_whole(
    tmp_path: Path, store: SQLiteEventStore
) -> None:
    # More than two retry batches, and a line that is not JSON among them.
    good = {"event": "user.login.failure", "code": "T1000W", "time": "2030-01-01T00:00:00+00:00"}
    directory = tmp_path / "fallback"
    directory.mkdir()
    lines = [json.dumps({**good, "uid": f"e{i}"}) for i in range(2 * RETRY_BATCH + 7)]
    lines.insert(RETRY_BATCH, "{not json")
    (directory / "98-left.jsonl").write_text("\n".join(lines) + "\n")

    audit = audit_log(tmp_path, store)
    await audit.start()
    assert audit.held == len(lines)
    await eventually_async(lambda: audit.held == 0, timeout=10)
    events, _ = await store.search(limit=10_000)
    assert len(events) == 2 * RETRY_BATCH + 7
    (refused,) = (directory / REFUSED).read_text().splitlines()
    assert json.loads(refused)["event"] == {"line": "{not json\n"}
    await audit.close()
