"""When every store connection is busy, callers and auth's background tasks say so in
one line (an auth restart with 2,000 returning nodes once logged a full traceback from
the access-request reaper per second)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certgate.auth import access_requests
from certgate.auth.server import AuthServer
from certgate.backend.postgres import PostgresBackend
from certgate.backend.registry import open_event_store
from certgate.clock import SystemClock
from certgate.errors import ConnectionProblem
from certgate.services.audit import AuditLog
from tests.support.postgres import PostgresServer
from tests.support.wait import eventually_async


@pytest.fixture
async def small_pool(
    postgres_server: PostgresServer, postgres_schema: str
) -> AsyncIterator[PostgresBackend]:
    backend = await PostgresBackend.open(
        postgres_server.conninfo(postgres_schema), pool_size=1, pool_timeout=0.2
    )
    yield backend
    await backend.close()


async def test_an_exhausted_pool_is_one_line_naming_the_setting(
    small_pool: PostgresBackend,
) -> None:
    assert (await small_pool.range("/x/")) == []  # a free connection: it works
    async with small_pool._pool.connection():  # the only connection, held
        with pytest.raises(ConnectionProblem) as caught:
            await small_pool.get("/x/y")
    message = str(caught.value)
    assert "\n" not in message
    assert "storage.pool_size" in message and "of 1" in message


async def test_the_request_reaper_logs_an_exhausted_pool_in_one_line(
    small_pool: PostgresBackend,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access_requests, "REAPER_INTERVAL", 0.05)
    events = await open_event_store({}, tmp_path)
    audit = AuditLog(events, tmp_path / "log" / "events.log")
    auth = AuthServer(small_pool, audit, SystemClock(), "test", "proxy:3080", "auth:3025")
    await auth.start()
    try:
        caplog.set_level(logging.WARNING, logger="certgate.auth.requests")
        async with small_pool._pool.connection():  # every connection busy
            await eventually_async(
                lambda: any("expiring access requests" in r.message for r in caplog.records),
                timeout=10,
            )
        failures = [r for r in caplog.records if "expiring access requests" in r.message]
        assert all(r.exc_info is None for r in failures)  # no traceback
        assert all("\n" not in r.getMessage() for r in failures)
        assert "storage.pool_size" in failures[0].getMessage()
    finally:
        await auth.close()
        await audit.close()
        await events.close()
