"""cgsh's node rows read either answer of `GET /my/nodes`: auth's brief rows, or the
full node resources an auth from before the brief form sends (several auth instances
are upgraded one at a time)."""

from __future__ import annotations

from typing import Any

import pytest

from certgate.client import ssh
from certgate.client.profile import Profile
from certgate.client.ssh import NodeRow, list_node_rows

FULL = [
    {
        "kind": "node",
        "version": "v1",
        "metadata": {"name": "web-2", "labels": {"env": "dev"}, "revision": 4},
        "spec": {"addr": "10.0.0.2:3022", "hostname": "web-2.example", "sub_kind": ""},
    },
    {
        "kind": "node",
        "version": "v1",
        "metadata": {"name": "db-1", "labels": {"env": "prod"}, "revision": 3},
        "spec": {"addr": "10.0.0.1:3022"},
    },
]
EXPECTED = [
    NodeRow("db-1", "", "10.0.0.1:3022", {"env": "prod"}),
    NodeRow("web-2", "web-2.example", "10.0.0.2:3022", {"env": "dev"}),
]


def _answering(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[dict[str, str]]:
    asked: list[dict[str, str]] = []

    def my_nodes(profile: Profile, params: dict[str, str]) -> Any:
        asked.append(params)
        return answer

    monkeypatch.setattr(ssh, "_my_nodes", my_nodes)
    return asked


def test_brief_rows_are_read_by_column_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # Columns in another order than NodeRow's: read by name, not by position.
    brief = {
        "columns": ["labels", "addr", "name", "hostname"],
        "rows": [
            [{"env": "dev"}, "10.0.0.2:3022", "web-2", "web-2.example"],
            [{"env": "prod"}, "10.0.0.1:3022", "db-1", ""],
        ],
    }
    asked = _answering(monkeypatch, brief)
    assert list_node_rows(Profile.__new__(Profile)) == EXPECTED
    assert asked == [{"form": "brief"}]


def test_full_nodes_from_an_older_auth_give_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    _answering(monkeypatch, FULL)
    assert list_node_rows(Profile.__new__(Profile)) == EXPECTED
    assert list_node_rows(Profile.__new__(Profile), {"env": "dev"}) == EXPECTED[1:]
    assert list_node_rows(Profile.__new__(Profile), {"env": "dev", "x": "y"}) == []
