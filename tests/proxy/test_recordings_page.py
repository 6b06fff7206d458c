"""The recordings page renders every stored recording, even one whose duration is no
number (auth stored NaN and Infinity from broken uploads before it refused them)."""

from __future__ import annotations

from typing import Any

import pytest

from certgate.proxy.webui.render import _ENV, minutes_seconds


def _row(recording_id: str, duration: Any) -> dict[str, Any]:
    return {
        "id": recording_id, "start": "2026-11-25T10:00:00Z", "user": "alice", "login": "root",
        "node": "db-1", "command": None, "truncated": False, "incomplete": False,
        "duration": duration,
    }  # fmt: skip


def test_a_recording_without_a_finite_duration_does_not_break_the_list() -> None:
    rows = [
        _row("a" * 8, 125.7),
        _row("b" * 8, float("nan")),
        _row("c" * 8, float("inf")),
        _row("d" * 8, None),
    ]
    html = _ENV.get_template("recordings.html").render(
        cluster="test", session=None, can=lambda resource, verb: False, user="", csrf="",
        recordings=rows, user_filter="", node_filter="", since="24h", error="",
    )  # fmt: skip
    assert "<td>2:05</td>" in html
    assert html.count("<td>?</td>") == 3


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0:00"), (59.9, "0:59"), (3600, "60:00"), (float("-inf"), "?"), (-1, "?"), ("x", "?")],
)
def test_minutes_seconds(seconds: Any, shown: str) -> None:
    assert minutes_seconds(seconds) == shown
