"""Fixtures that start real certgate processes (see tests/support/cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
