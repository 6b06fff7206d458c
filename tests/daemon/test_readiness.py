"""What /readyz says of an auth's store (daemon/process.py), each reason in words."""

from __future__ import annotations

import asyncio

import pytest

from certgate.backend.base import BEHIND_UNAVAILABLE
from certgate.daemon import process


class _Store:
    """The two things readiness asks a backend."""

    def __init__(self, behind: float = 0.0, hangs: bool = False) -> None:
        self.behind = behind
        self.hangs = hangs
        self.asked = 0

    def seconds_behind(self) -> float:
        return self.behind

    async def current_revision(self) -> int:
        self.asked += 1
        if self.hangs:
            await asyncio.sleep(3600)
        return 7


async def test_a_store_that_answers_is_ready() -> None:
    assert await process._store_ready(_Store()) is None  # type: ignore[arg-type]


async def test_a_store_that_does_not_answer_is_said_so_not_left_blank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The probe's timeout has no words of its own: the answer was "store unreachable: ".
    monkeypatch.setattr(process, "STORE_PROBE_SECONDS", 0.05)
    said = await process._store_ready(_Store(hangs=True))  # type: ignore[arg-type]
    assert said == "store unreachable: no answer in time"


async def test_a_store_watch_far_behind_is_said_without_a_round_trip() -> None:
    store = _Store(behind=BEHIND_UNAVAILABLE + 2, hangs=True)
    said = await asyncio.wait_for(process._store_ready(store), 1)  # type: ignore[arg-type]
    assert said is not None and said.startswith(f"store watch {BEHIND_UNAVAILABLE + 2:.0f}s behind")
    assert store.asked == 0
