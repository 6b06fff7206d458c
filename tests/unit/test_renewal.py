"""Renewals read the user and its roles afresh, whatever the auth server keeps decoded.

The renewal path keeps decoded resources (by revision) and evaluated role sets (by the
roles' revisions and the traits) so it does not rebuild them per request; these tests
change the store between renewals and check that every change applies at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from certgate.api.certs import generate_private_key, identity_from_ssh_cert, public_key_openssh
from certgate.api.identity import Identity
from certgate.api.meta import Metadata
from certgate.api.role import Role, RoleConditions, RoleOptions, RoleSpec
from certgate.auth.server import AuthServer
from certgate.errors import AccessDenied, BadParameter, NotFound
from tests.support.auth_server import started_auth_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with started_auth_server(tmp_path) as auth:
        yield auth


def _role(name: str, logins: list[str], ttl: timedelta = timedelta(hours=8)) -> Role:
    return Role(
        metadata=Metadata(name=name),
        spec=RoleSpec(
            allow=RoleConditions(logins=logins, node_labels={"*": "*"}),
            options=RoleOptions(max_session_ttl=ttl),
        ),
    )


async def _login(server: AuthServer, name: str) -> Identity:
    """The identity a fresh login would have put in the user's certificates."""
    user = await server.users.get(name)
    bundle = await server._issue_for_user(user, public_key_openssh(generate_private_key()), None)
    return bundle.identity


async def _renew(server: AuthServer, caller: Identity) -> Identity:
    bundle = await server.renew(
        caller, public_key_openssh(generate_private_key()), timedelta(hours=1)
    )
    assert identity_from_ssh_cert(bundle.ssh_cert).logins == bundle.identity.logins
    return bundle.identity


async def test_a_role_added_to_the_user_applies_at_the_next_renewal(server: AuthServer) -> None:
    await server.put_resource(_role("dev", ["dev"]), "admin", upsert=False)
    await server.put_resource(_role("ops", ["ops"]), "admin", upsert=False)
    await server.add_user("alice", ["dev"], {}, "admin")
    caller = await _login(server, "alice")
    assert (await _renew(server, caller)).roles == ("dev",)
    user = await server.users.get("alice")
    spec = user.spec.model_copy(update={"roles": ["dev", "ops"]})
    await server.users.update(user.model_copy(update={"spec": spec}))
    renewed = await _renew(server, caller)  # the certificate still names only "dev"
    assert renewed.roles == ("dev", "ops")
    assert renewed.logins == ("dev", "ops")


async def test_a_role_taken_from_the_user_is_gone_at_the_next_renewal(server: AuthServer) -> None:
    await server.put_resource(_role("dev", ["dev"]), "admin", upsert=False)
    await server.put_resource(_role("ops", ["ops"]), "admin", upsert=False)
    await server.add_user("alice", ["dev", "ops"], {}, "admin")
    caller = await _login(server, "alice")
    assert (await _renew(server, caller)).logins == ("dev", "ops")
    user = await server.users.get("alice")
    spec = user.spec.model_copy(update={"roles": ["dev"]})
    await server.users.update(user.model_copy(update={"spec": spec}))
    renewed = await _renew(server, caller)
    assert renewed.roles == ("dev",)
    assert renewed.logins == ("dev",)


async def test_an_edited_role_applies_at_the_next_renewal(server: AuthServer) -> None:
    await server.put_resource(_role("dev", ["dev"]), "admin", upsert=False)
    await server.add_user("alice", ["dev"], {}, "admin")
    caller = await _login(server, "alice")
    assert (await _renew(server, caller)).logins == ("dev",)
    await server.put_resource(_role("dev", ["deploy"], timedelta(minutes=10)), "admin", True)
    renewed = await _renew(server, caller)
    assert renewed.logins == ("deploy",)
    assert renewed.expires - server.clock.now() <= timedelta(minutes=10)


async def test_changed_traits_apply_at_the_next_renewal(server: AuthServer) -> None:
    await server.add_user("alice", ["access"], {"logins": ["alice"]}, "admin")
    caller = await _login(server, "alice")
    assert (await _renew(server, caller)).logins == ("alice",)
    user = await server.users.get("alice")
    spec = user.spec.model_copy(update={"traits": {"logins": ["alice", "ubuntu"]}})
    await server.users.update(user.model_copy(update={"spec": spec}))
    assert (await _renew(server, caller)).logins == ("alice", "ubuntu")


async def test_a_deleted_user_or_role_cannot_renew(server: AuthServer) -> None:
    await server.put_resource(_role("dev", ["dev"]), "admin", upsert=False)
    await server.add_user("alice", ["dev"], {}, "admin")
    await server.add_user("bob", ["dev"], {}, "admin")
    alice = await _login(server, "alice")
    bob = await _login(server, "bob")
    await _renew(server, alice)
    await server.delete_resource("user", "alice", "admin")
    with pytest.raises(NotFound, match='user "alice"'):
        await _renew(server, alice)
    # An admin cannot delete a role users hold; gone all the same (a restore from an
    # older backup, a delete racing a user's creation), it renews nothing.
    with pytest.raises(BadParameter, match='role "dev" is held by bob'):
        await server.delete_resource("role", "dev", "admin")
    await server.roles.delete("dev")
    with pytest.raises(NotFound, match='role "dev"'):
        await _renew(server, bob)


async def test_renewal_never_outlives_the_presented_certificate(server: AuthServer) -> None:
    await server.add_user("alice", ["access"], {"logins": ["alice"]}, "admin")
    caller = await _login(server, "alice")
    short = replace(caller, expires=server.clock.now() + timedelta(minutes=5))
    assert (await _renew(server, short)).expires <= short.expires
    with pytest.raises(AccessDenied, match="expired"):
        await _renew(server, replace(caller, expires=server.clock.now() - timedelta(seconds=1)))


async def test_each_renewal_is_audited_before_it_returns(server: AuthServer) -> None:
    await server.add_user("alice", ["access"], {"logins": ["alice"]}, "admin")
    caller = await _login(server, "alice")
    for _ in range(3):
        await _renew(server, caller)
    events, _ = await server.audit.search(event_types=["cert.create"], user="alice")
    assert len(events) == 4  # the login's and three renewals'
