"""The PostgreSQL audit event store: the event store suite, on a fresh schema."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from certgate.backend.events import EventStore
from certgate.backend.registry import open_event_store
from tests.support.postgres import PostgresServer

from .events_suite import EventStoreSuite


@pytest.fixture
def event_store_opener(
    postgres_server: PostgresServer, postgres_schema: str, tmp_path: Path
) -> Callable[[], Awaitable[EventStore]]:
    async def open_store() -> EventStore:
        return await open_event_store(postgres_server.storage(postgres_schema), tmp_path)

    return open_store


class TestPostgresEventStore(EventStoreSuite):
    pass
