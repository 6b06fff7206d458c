"""Certificates for agentless OpenSSH servers, signed by auth.

An agentless node is a stock sshd that trusts the user CA (`TrustedUserCAKeys`) and
presents a host certificate from the host CA. The proxy terminates SSH for it:

    admin ──cgctl auth sign──> sign_openssh_host   host key + certificate for the sshd
    proxy ──────────────────> sign_proxy_host      the proxy's own host certificate
                                                    *for the node's name* (short-lived),
                                                    presented to users in its place
    proxy ──────────────────> sign_onward_user     a user certificate for the proxy's key,
                                                    for one login, for a minute, made
                                                    from the certificate the user showed

The callers were authorized before (see http_agentless.py); this layer checks what it
is asked to certify: the node exists and is agentless, the presented user certificate
is the user CA's, unexpired, has the login as a principal, and the roles it names (as
stored now) allow that login on that node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ed25519

from certgate.api.certs import (
    load_ssh_public_key_text,
    private_key_to_openssh,
    ssh_public_key_text,
    verify_ssh_user_cert,
)
from certgate.api.host_names import check_host_name
from certgate.api.node import Node
from certgate.auth.ca import user_ca_trust_line
from certgate.auth.server import AuthServer
from certgate.errors import AccessDenied, BadParameter

DEFAULT_HOST_TTL = timedelta(hours=720)
MAX_HOST_TTL = timedelta(days=366)
# What the proxy presents for a node: renewed by the proxy long before it ends.
PROXY_HOST_TTL = timedelta(minutes=30)
# The onward certificate only has to last through one SSH authentication.
ONWARD_USER_TTL = timedelta(minutes=1)


@dataclass(frozen=True)
class HostKeyAndCert:
    private_key: str  # OpenSSH private key file
    public_key: str
    certificate: str  # OpenSSH host certificate line
    principals: list[str]
    expires: datetime
    user_ca: str  # TrustedUserCAKeys lines, for convenience


@dataclass(frozen=True)
class SignedCert:
    certificate: str
    expires: datetime


class AgentlessCerts:
    def __init__(self, server: AuthServer) -> None:
        self._server = server

    async def sign_openssh_host(
        self, host: str, principals: list[str], ttl: timedelta | None, by: str
    ) -> HostKeyAndCert:
        """A fresh host key for a stock sshd and its certificate from the host CA."""
        check_host_name(host, "host")
        for principal in principals:
            check_host_name(principal, "principal")
        wanted = ttl or DEFAULT_HOST_TTL
        if not timedelta(0) < wanted <= MAX_HOST_TTL:
            raise BadParameter(f"ttl must be between 0s and {int(MAX_HOST_TTL.days * 24)}h")
        now = self._server.clock.now()
        expires = now + wanted
        key = ed25519.Ed25519PrivateKey.generate()
        names = list(dict.fromkeys([host, *principals]))
        issuer = self._server.issuer
        certificate = issuer.signer("host_ssh").sign_host_ssh(
            key.public_key(), host, names, valid_before=expires, valid_after=now
        )
        await self._server.audit.emit(
            "cert.create",
            user=by,
            cert_type="host",
            host=host,
            principals=names,
            expires=expires.isoformat(),
        )
        return HostKeyAndCert(
            private_key=private_key_to_openssh(key).decode(),
            public_key=ssh_public_key_text(key.public_key()),
            certificate=certificate,
            principals=names,
            expires=expires,
            user_ca=user_ca_trust_line(issuer.authorities["user_ssh"]),
        )

    async def sign_proxy_host(self, node_name: str, public_key: str) -> SignedCert:
        """The certificate a proxy presents to users in place of agentless `node_name`."""
        node = await self._agentless_node(node_name)
        now = self._server.clock.now()
        expires = now + PROXY_HOST_TTL
        names = [node.name, f"{node.name}.{self._server.cluster_name}"]
        if node.spec.hostname:
            names.append(node.spec.hostname)
        certificate = self._server.issuer.signer("host_ssh").sign_host_ssh(
            load_ssh_public_key_text(public_key),
            node.name,
            list(dict.fromkeys(names)),
            valid_before=expires,
            valid_after=now,
        )
        return SignedCert(certificate, expires)

    async def sign_onward_user(
        self, presented: str, login: str, node_name: str, public_key: str
    ) -> SignedCert:
        """A user certificate for the proxy's `public_key`, good for `login` only.

        Made from the certificate the user authenticated to the proxy with: same user,
        roles, traits and access requests; principal = `login`; it ends within a minute
        and never after the presented one.
        """
        server = self._server
        now = server.clock.now()
        user_cas = [key.public for key in server.issuer.authorities["user_ssh"].spec.active_keys]
        identity = verify_ssh_user_cert(presented, user_cas, now, login=login)
        node = await self._agentless_node(node_name)
        roles = await server.load_roles(list(identity.roles))
        role_set = server.role_sets.get(roles, identity.traits)
        role_set.check_login(node.name, node.metadata.labels, login)
        await server.check_not_locked(
            identity.username, identity.roles, identity.request_ids, identity.issued
        )
        expires = min(now + ONWARD_USER_TTL, identity.expires)
        onward = replace(identity, logins=(login,), expires=expires)
        certificate = server.issuer.signer("user_ssh").sign_user_ssh(
            load_ssh_public_key_text(public_key),
            onward,
            valid_after=now,
            valid_before=expires,
            permit_port_forwarding=role_set.options().port_forwarding,
            # The proxy does not relay agents to agentless nodes.
            permit_agent_forwarding=False,
        )
        return SignedCert(certificate, expires)

    async def _agentless_node(self, name: str) -> Node:
        node = await self._server.nodes.get(name)
        if node.spec.sub_kind != "openssh":
            raise AccessDenied(f'access denied: node "{name}" is not an agentless openssh node')
        return node
