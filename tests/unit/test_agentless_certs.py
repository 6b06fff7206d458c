"""What auth certifies for agentless OpenSSH servers (auth/agentless.py), and who may ask."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import ssh

from certgate.api.certs import (
    generate_private_key,
    identity_from_ssh_cert,
    load_ssh_certificate,
    public_key_openssh,
)
from certgate.api.identity import SYSTEM_NODE, SYSTEM_PROXY, Identity
from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.api.role import Role, RoleConditions, RoleSpec, Rule
from certgate.auth import permissions as perm
from certgate.auth.agentless import AgentlessCerts
from certgate.auth.ca import CASigner, generate_authority
from certgate.auth.permissions import Authorizer
from certgate.auth.server import AuthServer
from certgate.errors import AccessDenied, BadParameter, NotFound
from tests.support.auth_server import started_auth_server
from tests.support.wait import eventually_async

NODE = "web-1"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with started_auth_server(tmp_path) as auth:
        await auth.put_resource(
            Role(
                metadata=Metadata(name="dev"),
                spec=RoleSpec(
                    allow=RoleConditions(logins=["ubuntu", "deploy"], node_labels={"env": "dev"}),
                    deny=RoleConditions(logins=["deploy"], node_labels={"tier": "db"}),
                ),
            ),
            "admin",
            upsert=False,
        )
        for name, sub_kind, labels in (
            (NODE, "openssh", {"env": "dev"}),
            ("db-1", "openssh", {"env": "dev", "tier": "db"}),
            ("agent-1", "", {"env": "dev"}),
        ):
            node = Node(
                metadata=Metadata(name=name, labels=labels),
                spec=NodeSpec(addr="127.0.0.1:22", sub_kind=sub_kind),  # type: ignore[arg-type]
            )
            await auth.put_resource(node, "admin", upsert=False)
        yield auth


def _user_cert(
    server: AuthServer,
    logins: tuple[str, ...] = ("ubuntu", "deploy"),
    expires_in: timedelta = timedelta(hours=1),
    signer: CASigner | None = None,
) -> str:
    now = datetime.now(UTC)
    identity = Identity(
        username="alice",
        roles=("dev",),
        traits={"logins": ["ubuntu"]},
        logins=logins,
        expires=now + expires_in,
    )
    return (signer or server.issuer.signer("user_ssh")).sign_user_ssh(
        public_key_openssh(generate_private_key()),
        identity,
        now - timedelta(hours=2),
        identity.expires,
        permit_port_forwarding=True,
        permit_agent_forwarding=True,
    )


async def test_an_openssh_host_gets_a_key_and_a_host_certificate(server: AuthServer) -> None:
    signed = await AgentlessCerts(server).sign_openssh_host(
        NODE, ["10.0.0.5", NODE], timedelta(hours=720), "admin"
    )
    key = serialization.load_ssh_private_key(signed.private_key.encode(), password=None)
    cert = load_ssh_certificate(signed.certificate)
    assert cert.type == ssh.SSHCertificateType.HOST
    assert [p.decode() for p in cert.valid_principals] == [NODE, "10.0.0.5"]
    assert cert.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ) == key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    host_ca = server.issuer.authorities["host_ssh"].spec.active_keys[0].public
    assert cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode() == " ".join(host_ca.split()[:2])
    assert signed.user_ca.startswith("ssh-ed25519 ")
    assert abs((signed.expires - datetime.now(UTC)) - timedelta(hours=720)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("host", "ttl"),
    [("", None), ("web 1", None), ("*.example", None), (NODE, timedelta(days=400))],
)
async def test_bad_host_requests_are_refused(
    server: AuthServer, host: str, ttl: timedelta | None
) -> None:
    with pytest.raises(BadParameter):
        await AgentlessCerts(server).sign_openssh_host(host, [], ttl, "admin")


async def test_the_proxy_is_certified_only_for_agentless_nodes(server: AuthServer) -> None:
    certs = AgentlessCerts(server)
    key = public_key_openssh(generate_private_key())
    signed = await certs.sign_proxy_host(NODE, key)
    cert = load_ssh_certificate(signed.certificate)
    assert cert.type == ssh.SSHCertificateType.HOST
    assert [p.decode() for p in cert.valid_principals] == [NODE, f"{NODE}.test"]
    assert signed.expires - datetime.now(UTC) <= timedelta(minutes=30)
    with pytest.raises(AccessDenied, match="not an agentless"):
        await certs.sign_proxy_host("agent-1", key)
    with pytest.raises(NotFound):
        await certs.sign_proxy_host("nowhere", key)


async def test_the_onward_certificate_is_for_one_login_for_a_minute(server: AuthServer) -> None:
    presented = _user_cert(server)
    signed = await AgentlessCerts(server).sign_onward_user(
        presented, "ubuntu", NODE, public_key_openssh(generate_private_key())
    )
    identity = identity_from_ssh_cert(signed.certificate)
    original = identity_from_ssh_cert(presented)
    assert identity.logins == ("ubuntu",)
    assert (identity.username, identity.roles, identity.traits) == (
        original.username,
        original.roles,
        original.traits,
    )
    assert identity.expires - datetime.now(UTC) <= timedelta(minutes=1)
    cert = load_ssh_certificate(signed.certificate)
    assert b"permit-agent-forwarding" not in cert.extensions


async def test_the_onward_certificate_never_outlives_the_presented_one(server: AuthServer) -> None:
    presented = _user_cert(server, expires_in=timedelta(seconds=20))
    signed = await AgentlessCerts(server).sign_onward_user(
        presented, "ubuntu", NODE, public_key_openssh(generate_private_key())
    )
    assert signed.expires <= identity_from_ssh_cert(presented).expires


async def test_onward_refusals(server: AuthServer) -> None:
    certs = AgentlessCerts(server)
    key = public_key_openssh(generate_private_key())
    other_ca = CASigner(generate_authority("user_ssh", "elsewhere", datetime.now(UTC)))
    cases = [
        (_user_cert(server, signer=other_ca), "ubuntu", NODE, "not signed by this cluster"),
        (_user_cert(server, expires_in=timedelta(seconds=-1)), "ubuntu", NODE, "expired"),
        (_user_cert(server, logins=("ubuntu",)), "root", NODE, "not a principal"),
        (_user_cert(server), "deploy", "db-1", "denied by role dev"),
        (_user_cert(server), "ubuntu", "agent-1", "not an agentless"),
    ]
    for presented, login, node, reason in cases:
        with pytest.raises(AccessDenied, match=reason):
            await certs.sign_onward_user(presented, login, node, key)


async def test_no_onward_certificate_for_a_locked_user(server: AuthServer) -> None:
    lock = Lock(
        metadata=Metadata(name="l1"),
        spec=LockSpec(target=LockTarget(user="alice"), message="incident 42"),
    )
    await server.put_resource(lock, "admin", upsert=False)
    await eventually_async(server.lock_cache.all)  # the lock cache follows the store's watch
    with pytest.raises(AccessDenied, match="incident 42"):
        await AgentlessCerts(server).sign_onward_user(
            _user_cert(server), "ubuntu", NODE, public_key_openssh(generate_private_key())
        )


async def test_only_proxies_ask_for_agentless_certificates(server: AuthServer) -> None:
    await server.put_resource(
        Role(
            metadata=Metadata(name="everything"),
            spec=RoleSpec(allow=RoleConditions(rules=[Rule(resources=["*"], verbs=["*"])])),
        ),
        "admin",
        upsert=False,
    )
    authorizer = Authorizer(server.load_roles, server.role_sets)
    expires = datetime.now(UTC) + timedelta(hours=1)
    proxy = Identity(username="p", roles=(SYSTEM_PROXY,), expires=expires, kind="service")
    node = Identity(username="n", roles=(SYSTEM_NODE,), expires=expires, kind="service")
    editor = Identity(username="e", roles=("everything",), expires=expires, kind="user")
    developer = Identity(username="d", roles=("dev",), expires=expires, kind="user")
    assert await authorizer.check(proxy, perm.AGENTLESS, "create") is proxy
    for caller in (node, editor):
        with pytest.raises(AccessDenied):
            await authorizer.check(caller, perm.AGENTLESS, "create")
    # Signing a host certificate for an sshd is `create` on cert_authority.
    assert await authorizer.check(editor, "cert_authority", "create") is editor
    for caller in (developer, proxy):
        with pytest.raises(AccessDenied):
            await authorizer.check(caller, "cert_authority", "create")
