"""Fixtures for the backend compliance suite (`suite.py`) and the audit event store
suite (`events_suite.py`).

Each backend's test module subclasses `BackendSuite` and provides one fixture,
`backend_target`: where a fresh, empty store lives, given as the `storage` config the
registry takes. Everything else (`backend`, a second instance on the same store, the
clock) is built here from it, so every backend runs the same tests the same way. The
config form also lets a test start a second process on the same store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certgate.backend.base import Backend
from certgate.backend.events import EventStore
from certgate.backend.registry import open_backend
from certgate.clock import FakeClock

from .events_suite import ALL


@dataclass(frozen=True)
class BackendTarget:
    """A store under test, as `open_backend(storage, data_dir)` takes it."""

    storage: dict[str, Any]
    data_dir: Path

    async def open(self, clock: FakeClock | None = None) -> Backend:
        return await open_backend(self.storage, self.data_dir, clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def backend(backend_target: BackendTarget, clock: FakeClock) -> AsyncIterator[Backend]:
    opened = await backend_target.open(clock)
    yield opened
    await opened.close()


@pytest.fixture
async def other_backend(
    backend_target: BackendTarget, clock: FakeClock, backend: Backend
) -> AsyncIterator[Backend]:
    """A second instance on the same store, as another process would open it."""
    opened = await backend_target.open(clock)
    yield opened
    await opened.close()


# -- audit event stores: each module provides `event_store_opener` -----------------

EventStoreOpener = Callable[[], Awaitable[EventStore]]


@pytest.fixture
async def store(event_store_opener: EventStoreOpener) -> AsyncIterator[EventStore]:
    opened = await event_store_opener()
    yield opened
    await opened.close()


@pytest.fixture
async def other_store(
    event_store_opener: EventStoreOpener, store: EventStore
) -> AsyncIterator[EventStore]:
    """A second instance on the same store, as another auth process would open it."""
    opened = await event_store_opener()
    yield opened
    await opened.close()


@pytest.fixture
async def loaded(store: EventStore) -> EventStore:
    """The store with the suite's 120 events: 100 in one batch, then 20 one by one."""
    await store.append_many(ALL[:100])
    for event in ALL[100:]:
        await store.append(event)
    return store
