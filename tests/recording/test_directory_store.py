"""The directory store: the compliance suite, plus its files and the registry."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from certgate.errors import BadParameter
from certgate.recording.directory_store import DirectoryStore
from certgate.recording.registry import open_recording_store

from .conftest import StoreTarget
from .suite import RecordingStoreSuite, cast, info


class TestDirectoryStore(RecordingStoreSuite):
    @pytest.fixture
    def store_target(self, tmp_path: Path) -> StoreTarget:
        return StoreTarget("file://", tmp_path)


async def test_files_are_private_and_nothing_is_left_in_tmp(tmp_path: Path) -> None:
    store = open_recording_store("file://", tmp_path)
    assert isinstance(store, DirectoryStore) and store.root == tmp_path / "recordings"
    item = info()
    await store.put(item, cast())
    for name in (f"{item.id}.cast", f"{item.id}.json"):
        assert stat.S_IMODE((store.root / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert list((store.root / ".tmp").iterdir()) == []


def test_registry_takes_an_absolute_directory(tmp_path: Path) -> None:
    store = open_recording_store(f"file://{tmp_path}/elsewhere", tmp_path / "data")
    assert isinstance(store, DirectoryStore) and store.root == tmp_path / "elsewhere"


@pytest.mark.parametrize("uri", ["ftp://x", "file://host/path"])
def test_registry_refuses_what_it_cannot_open(tmp_path: Path, uri: str) -> None:
    with pytest.raises(BadParameter):
        open_recording_store(uri, tmp_path)
