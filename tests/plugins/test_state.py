"""The plugin's state file: round trips, atomic replacement, refusals of a damaged file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from certgate.errors import BadParameter
from certgate.plugins.state import MessageRecord, PluginState, RequestRecord, StateFile
from tests.plugins.requests import pending, review


def test_round_trip(tmp_path: Path) -> None:
    request = pending(reviews=(review(),))
    state = PluginState(
        requests={
            request.id: RequestRecord(
                request,
                messages={
                    "#access": MessageRecord({"channel": "C1", "ts": "1.2"}, "PENDING", 1),
                    "x@example.com": MessageRecord(failed="users_not_found"),
                },
                requester_told=False,
            )
        },
        initialized=True,
    )
    file = StateFile(tmp_path / "sub" / "state.json")
    file.save(state)
    assert file.load() == state
    assert os.stat(file.path).st_mode & 0o777 == 0o600
    assert not (tmp_path / "sub" / "state.json.tmp").exists()


def test_a_missing_file_is_a_fresh_start(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "none.json").load()
    assert state == PluginState()
    assert not state.initialized


def test_save_replaces_the_whole_file(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "state.json")
    file.save(PluginState(requests={"a": RequestRecord(pending("a"))}, initialized=True))
    file.save(PluginState(initialized=True))
    assert json.loads(file.path.read_text())["requests"] == {}


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 9}', '{"version": 1, "requests": 3}'])
def test_a_damaged_file_is_refused_with_what_to_do(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(BadParameter, match="move it away"):
        StateFile(path).load()


def test_a_quiet_record_keeps_only_what_a_restart_needs(tmp_path: Path) -> None:
    request = pending(state="APPROVED", reviews=(review(),), reason="long " * 100)
    record = RequestRecord(request, messages={"#a": MessageRecord({"ts": "1"}, "APPROVED", 1)})
    record.quiet = True
    file = StateFile(tmp_path / "state.json")
    file.save(PluginState(requests={request.id: record}, initialized=True))
    assert len(file.path.read_text()) < 300
    loaded = file.load().requests[request.id]
    assert loaded.quiet and loaded.request.resolved and loaded.request.user == "alice"
