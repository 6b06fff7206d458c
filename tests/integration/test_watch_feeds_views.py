"""Services keep live views of roles and locks through auth's watch stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from certgate.api.role import Role
from certgate.errors import AccessDenied
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from certgate.rpc.watcher import ResourceView
from tests.support.cluster import Cluster

ROLE = "kind: role\nmetadata: {name: watched}\nspec: {allow: {logins: [w1]}}\n"


async def _admin_client(cluster: Cluster) -> AsyncAuthClient:
    identity = IdentityFiles.load(cluster.data_dir / "admin")
    return AsyncAuthClient(f"https://{cluster.auth_addr}", identity.tls_context())


async def _until(predicate: object, timeout: float = 30) -> float:
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, "view did not catch up"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_a_view_follows_creates_updates_and_deletes(cluster: Cluster) -> None:
    client = await _admin_client(cluster)
    changes: list[tuple[str, str, bool]] = []

    async def on_change(kind: str, name: str, resource: object) -> None:
        changes.append((kind, name, resource is not None))

    view = ResourceView(client, ["role", "lock"], on_change)
    view.start()
    try:
        await view.wait_ready()
        assert view.get("role", "access") is not None  # the snapshot has the presets
        await asyncio.to_thread(cluster.cgctl, "create", "-f", "-", input=ROLE)
        await _until(lambda: view.get("role", "watched") is not None)
        role = view.get("role", "watched")
        assert isinstance(role, Role) and role.spec.allow.logins == ["w1"]
        updated = ROLE.replace("[w1]", "[w2]")
        await asyncio.to_thread(cluster.cgctl, "create", "--force", "-f", "-", input=updated)
        await _until(lambda: view.get("role", "watched").spec.allow.logins == ["w2"])  # type: ignore[union-attr]
        await asyncio.to_thread(cluster.cgctl, "rm", "role/watched")
        await _until(lambda: view.get("role", "watched") is None)
        assert ("role", "watched", False) in changes
        assert view.seconds_since_contact() < 5.0  # pinged every second; loaded CI is slow
    finally:
        await view.close()
        await client.close()


async def test_a_user_without_rules_cannot_watch(cluster: Cluster) -> None:
    user = cluster.add_user("no-watch", roles="access")
    await asyncio.to_thread(cluster.login, user)
    identity = IdentityFiles.load(user.home / "keys")
    client = AsyncAuthClient(f"https://{cluster.auth_addr}", identity.tls_context())
    try:
        with pytest.raises(AccessDenied, match='do not allow "list" on "lock"'):
            async with client.stream("GET", "/v1/watch", params={"kinds": "lock"}) as lines:
                async for _ in lines:
                    break
    finally:
        await client.close()
