"""The audit log (services/audit.py) on the real SQLite event store: auth's own events are
cut to the size caps too, and an event stored twice (a service's retry) is stored and
written to the log file once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certgate.api.event_caps import MAX_INDEXED_CHARS
from certgate.backend.events_sqlite import SQLiteEventStore
from certgate.services.audit import AuditLog


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[AuditLog]:
    store = await SQLiteEventStore.open(tmp_path / "events.db")
    log = AuditLog(store, tmp_path / "log" / "events.log")
    yield log
    await log.close()
    await store.close()


async def test_a_refused_login_with_a_megabyte_name_stores_a_prefix(
    audit: AuditLog, tmp_path: Path
) -> None:
    name = "m" * 1_000_000
    await audit.emit("user.login.failure", user=name, success=False, error="unknown user")
    (stored,), _ = await audit.search(since=None, until=None)
    assert stored["user"] == name[:MAX_INDEXED_CHARS]
    assert stored["truncated"] == ["user"] and stored["code"] == "T1000W"
    line = (tmp_path / "log" / "events.log").read_text()
    assert len(line) < 2000 and json.loads(line)["truncated"] == ["user"]


async def test_a_cut_upload_event_keeps_both_its_flag_and_the_list_of_cut_fields(
    audit: AuditLog,
) -> None:
    """session.upload says a recording was truncated in a field of its own: the size
    caps' `truncated` list of cut fields must not overwrite it, nor it them."""
    await audit.emit("session.upload", user="u" * 10_000, session_id="s", recording_truncated=True)
    (stored,), _ = await audit.search(since=None, until=None)
    assert stored["recording_truncated"] is True and stored["truncated"] == ["user"]


async def test_an_event_recorded_twice_is_stored_and_logged_once(
    audit: AuditLog, tmp_path: Path
) -> None:
    event = {"event": "exec", "code": "T3002I", "time": "2030-01-01T00:00:00+00:00", "uid": "u1"}
    await audit.record({**event, "user": "alice"})
    await audit.record({**event, "user": "alice"})  # a service's retry
    events, _ = await audit.search(since=None, until=None)
    assert [e["uid"] for e in events] == ["u1"]
    assert len((tmp_path / "log" / "events.log").read_text().splitlines()) == 1


async def test_an_unknown_event_type_gets_the_unknown_code(audit: AuditLog) -> None:
    stored = await audit.emit("no.such.event", user="alice")
    assert stored["code"] == "TCC00E"
