"""`cgsh play PREFIX`: a prefix is looked for among the newest recordings the user can
list; when that scan is full, a miss says so and asks for the whole id."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from certgate.client import recordings
from certgate.errors import NotFound


class _Api:
    def __init__(self, count: int) -> None:
        self.items = [
            {"id": f"ab{str(uuid.uuid4())[2:]}", "user": "u", "login": "l",
             "node": "n", "start": "2026-12-03T00:00:00+00:00"}
            for i in range(count)
        ]  # fmt: skip

    def call(self, method: str, path: str, params: Any = None) -> Any:
        return self.items[: int(params["limit"])]


def test_a_miss_in_a_full_scan_asks_for_the_whole_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recordings, "MAX_PREFIX_SCAN", 3)
    full = _Api(3)
    assert recordings._checked(full, full.items[1]["id"][:-1]) == full.items[1]["id"]
    with pytest.raises(NotFound) as missed:
        recordings._checked(full, "3f2a9c")
    assert missed.value.message == (
        'recording "3f2a9c" not found among the 3 newest you can list: give its whole id'
    )
    # Fewer than that: every recording was looked at, a plain miss.
    with pytest.raises(NotFound) as plain:
        recordings._checked(_Api(2), "3f2a9c")
    assert plain.value.message == 'recording "3f2a9c" not found'
