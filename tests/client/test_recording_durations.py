"""`cgsh recordings ls` shows every recording, even one whose stored duration is no
number (auth stored NaN and Infinity from broken uploads before it refused them)."""

from __future__ import annotations

import pytest

from certgate.client.recordings import format_seconds


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (4.25, "4.2s"),
        (42, "42s"),
        (185, "3m05s"),
        (7260, "2h01m"),
        (float("nan"), "?"),
        (float("inf"), "?"),
        (float("-inf"), "?"),
    ],
)
def test_durations_as_listed(seconds: float, shown: str) -> None:
    assert format_seconds(seconds) == shown
