"""Fixtures for the recordings store compliance suite (`suite.py`).

Each store's test module subclasses `RecordingStoreSuite` and provides one fixture,
`store_target`: the `auth_service.recordings.uri` of a fresh, empty store and the data
dir it is relative to. `store` and `other_store` (a second instance on the same store,
as another auth process would open it) are built here from it through the registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certgate.recording.registry import open_recording_store
from certgate.recording.store import RecordingStore


@dataclass(frozen=True)
class StoreTarget:
    uri: str
    data_dir: Path

    def open(self) -> RecordingStore:
        return open_recording_store(self.uri, self.data_dir)


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[RecordingStore]:
    opened = store_target.open()
    yield opened
    await opened.close()


@pytest.fixture
async def other_store(
    store_target: StoreTarget, store: RecordingStore
) -> AsyncIterator[RecordingStore]:
    opened = store_target.open()
    yield opened
    await opened.close()
