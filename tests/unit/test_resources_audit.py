"""Every resource written is audited, also when cutting a narrowed user's certificates
fails after the write (the store, say): those writes happened."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certgate.api.codec import from_dict
from certgate.auth.server import AuthServer
from certgate.errors import ConnectionProblem
from tests.support.auth_server import started_auth_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with started_auth_server(tmp_path) as auth:
        yield auth


def _role(name: str) -> Any:
    return from_dict({"kind": "role", "metadata": {"name": name}, "spec": {}})


def _user(roles: list[str]) -> Any:
    return from_dict({"kind": "user", "metadata": {"name": "ann"}, "spec": {"roles": roles}})


async def test_a_failed_cut_leaves_no_write_unaudited(
    server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.put_resources([_role("a"), _role("b"), _user(["a", "b"])], "admin", False)

    async def store_down(*args: Any) -> None:
        raise ConnectionProblem("postgres store unreachable: connection refused")

    monkeypatch.setattr(server, "cut_user_certs", store_down)
    # ann loses role b (her certificates must be cut), and a role is created with it.
    with pytest.raises(ConnectionProblem):
        await server.put_resources([_user(["a"]), _role("c")], "admin", True)
    lines = (tmp_path / "log" / "events.log").read_text().splitlines()
    written = [(e["event"], e.get("name")) for e in map(json.loads, lines)]
    # Both writes of the failed call are in the log, the one after the failed cut too.
    assert written[-2:] == [("resource.created", "ann"), ("role.created", "c")]
