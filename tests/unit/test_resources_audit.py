"""Narrowing a user cuts their certificates before the write, so a failure leaves no
working certificate with what was taken away, even when the call is sent again; and
every resource written is audited, also when the cut after the write fails."""

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


class LockWritesFail:
    """The store refuses the next `count` lock writes, as PostgreSQL does when its
    connection drops (the lock store writes with `put`)."""

    def __init__(self, server: AuthServer, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.left = count
        real_put = server.backend.put

        async def put(item: Any) -> Any:
            if item.key.startswith("/locks/") and self.left:
                self.left -= 1
                raise ConnectionProblem("postgres store unreachable: connection refused")
            return await real_put(item)

        monkeypatch.setattr(server.backend, "put", put)


async def test_a_cut_that_fails_before_the_write_leaves_nothing_written(
    server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.put_resources([_role("a"), _role("b"), _user(["a", "b"])], "admin", False)
    LockWritesFail(server, monkeypatch, 1)
    # ann loses role b (her certificates must be cut), and a role is created with it.
    with pytest.raises(ConnectionProblem):
        await server.put_resources([_user(["a"]), _role("c")], "admin", True)
    assert (await server.users.get("ann")).spec.roles == ["a", "b"]
    assert [r.metadata.name for r in await server.roles.list()].count("c") == 0
    # Sent again (by the admin, or by a proxy to another auth): she is cut this time.
    await server.put_resources([_user(["a"]), _role("c")], "admin", True)
    (lock,) = [lock for lock in await server.locks.list() if lock.name == "certs-of-ann"]
    assert lock.spec.target.user == "ann"


async def test_a_demotion_whose_cut_failed_is_cut_when_sent_again(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the roles were written first: the call failed on the cut, and the same
    call sent again (a proxy sends a 503'd call to the next auth) found nothing left to
    narrow, answered 200, and the certificates with the removed role kept working."""
    await server.put_resources([_role("a"), _role("b"), _user(["a", "b"])], "admin", False)
    LockWritesFail(server, monkeypatch, 1)
    with pytest.raises(ConnectionProblem):
        await server.update_user("ann", ["a"], None, "admin")
    await server.update_user("ann", ["a"], None, "admin")
    assert (await server.users.get("ann")).spec.roles == ["a"]
    assert "certs-of-ann" in {lock.name for lock in await server.locks.list()}


async def test_a_cut_that_fails_after_the_write_leaves_no_write_unaudited(
    server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.put_resources([_role("a"), _role("b"), _user(["a", "b"])], "admin", False)
    LockWritesFail(server, monkeypatch, 0)
    real_cut = server.cut_user_certs

    async def second_cut_fails(user: Any, by: str, reason: str, wait: bool = True) -> Any:
        if wait:  # the cut after the write
            LockWritesFail(server, monkeypatch, 1)
        return await real_cut(user, by, reason, wait)

    monkeypatch.setattr(server, "cut_user_certs", second_cut_fails)
    with pytest.raises(ConnectionProblem):
        await server.put_resources([_user(["a"]), _role("c")], "admin", True)
    lines = (tmp_path / "log" / "events.log").read_text().splitlines()
    written = [(e["event"], e.get("name")) for e in map(json.loads, lines)]
    # Both writes of the failed call are in the log, after the first cut's lock.
    assert written[-3:] == [
        ("lock.created", "certs-of-ann"),
        ("resource.created", "ann"),
        ("role.created", "c"),
    ]
    # The first cut holds: her old certificates are cut even though the call failed.
    assert "certs-of-ann" in {lock.name for lock in await server.locks.list()}
