"""Size caps on audit events (api/event_caps.py): bounded, and what is cut is named."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from certgate.api.event_caps import (
    MAX_EVENT_BYTES,
    MAX_FIELD_CHARS,
    MAX_FIELDS,
    MAX_INDEXED_CHARS,
    capped,
)

BASE = {"event": "exec", "code": "T3002I", "time": "2030-01-01T00:00:00+00:00", "uid": "u-1"}


def size(event: dict[str, Any]) -> int:
    return len(json.dumps(event, separators=(",", ":")))


def test_a_small_event_is_left_as_it_is() -> None:
    event = {**BASE, "user": "alice", "command": "ls -l", "tty": True, "exit_code": 0}
    assert capped(event) is event


def test_a_megabyte_user_name_is_cut_to_the_indexed_cap_and_marked() -> None:
    out = capped({**BASE, "user": "a" * 1_000_000, "error": "unknown user"})
    assert out["user"] == "a" * MAX_INDEXED_CHARS
    assert out["truncated"] == ["user"]
    assert out["error"] == "unknown user"
    assert size(out) < 2 * MAX_INDEXED_CHARS + 500


def test_a_short_event_with_a_long_user_is_still_cut() -> None:
    # Under the size that skips the per-field checks, but `user` has its own cap.
    out = capped({**BASE, "user": "b" * (MAX_INDEXED_CHARS + 10)})
    assert len(out["user"]) == MAX_INDEXED_CHARS and out["truncated"] == ["user"]


def test_long_fields_lists_and_mappings_are_cut_to_the_field_cap() -> None:
    out = capped(
        {
            **BASE,
            "command": "x" * 10_000,
            "principals": [f"host-{n}" for n in range(5000)],
            "fine": "ok",
        }
    )
    assert len(out["command"]) == MAX_FIELD_CHARS
    assert isinstance(out["principals"], str) and len(out["principals"]) == MAX_FIELD_CHARS
    assert out["truncated"] == ["command", "principals"]
    assert out["fine"] == "ok"


def test_too_many_fields_and_long_names_are_dropped_and_named() -> None:
    fields = {f"f{n}": n for n in range(MAX_FIELDS + 10)}
    out = capped({**BASE, **fields, "n" * 500: 1})
    assert len(out) <= MAX_FIELDS + len(BASE) + 1
    assert "n" * 64 in out["truncated"] and f"f{MAX_FIELDS + 9}" in out["truncated"]


def test_the_identity_of_an_event_is_never_cut() -> None:
    out = capped({**BASE, "command": "y" * 100_000})
    assert {k: out[k] for k in BASE} == BASE


@given(
    st.dictionaries(
        st.text(max_size=80),
        st.one_of(
            st.text(max_size=5000),
            st.integers(),
            st.lists(st.text(max_size=300), max_size=30),
            st.dictionaries(st.text(max_size=10), st.text(max_size=500), max_size=20),
        ),
        max_size=90,
    )
)
def test_any_event_fits_the_caps(fields: dict[str, Any]) -> None:
    fields = {k: v for k, v in fields.items() if k not in BASE and k != "truncated"}
    out = capped({**BASE, **fields})
    # Within the event cap, allowing for the list naming what was cut.
    assert size(out) <= MAX_EVENT_BYTES + 6 * 1024
    for name, value in out.items():
        if isinstance(value, str) and name not in BASE:
            assert len(value) <= MAX_FIELD_CHARS
        if name in ("user", "node") and isinstance(value, str):
            assert len(value) <= MAX_INDEXED_CHARS
    kept = {k for k in out if k not in BASE and k != "truncated"}
    for name, value in fields.items():
        if name not in kept or out[name] != value:
            assert name[:64] in out.get("truncated", []), name
