"""A real auth server in the test's own process, on SQLite stores in a temporary
directory: for tests of auth's logic that need no HTTP or other processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from certgate.auth.server import AuthServer
from certgate.backend.registry import open_backend, open_event_store
from certgate.clock import SystemClock
from certgate.services.audit import AuditLog


@asynccontextmanager
async def started_auth_server(data_dir: Path) -> AsyncIterator[AuthServer]:
    """Started, with its audit log in `data_dir/log/events.log`; closed afterwards."""
    backend = await open_backend({}, data_dir)
    events = await open_event_store({}, data_dir)
    audit = AuditLog(events, data_dir / "log" / "events.log")
    auth = AuthServer(backend, audit, SystemClock(), "test", "proxy:3080", "auth:3025")
    await auth.start()
    try:
        yield auth
    finally:
        await auth.close()
        await audit.close()
        await events.close()
        await backend.close()
