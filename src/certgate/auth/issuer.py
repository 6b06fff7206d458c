"""Turning a user (or a joining host) into signed certificates.

    user + roles  --RoleSet-->  Identity  --CA signers-->  SSH cert + X.509 cert

The signers are built once from the CA resources in the store; private keys never
leave this process.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import datetime, timedelta

from certgate.access.rbac import RoleSet
from certgate.api.authority import CAType, CertAuthority
from certgate.api.bundle import CertBundle
from certgate.api.certs import load_ssh_public_key_text
from certgate.api.identity import Identity
from certgate.api.role import Role
from certgate.api.user import User
from certgate.auth.ca import CLOCK_SKEW, CASigner, host_ca_known_hosts_line
from certgate.clock import Clock

DEFAULT_USER_TTL = timedelta(hours=8)
SERVICE_TTL = timedelta(days=7)


class CertIssuer:
    def __init__(self, authorities: dict[CAType, CertAuthority], clock: Clock) -> None:
        self._clock = clock
        self.authorities = authorities
        self._signers = {name: CASigner(ca) for name, ca in authorities.items()}
        # The same in every bundle: made once.
        self._tls_cas = [key.public for key in authorities["host_tls"].spec.active_keys] + [
            key.public for key in authorities["user_tls"].spec.active_keys
        ]
        self._known_hosts = host_ca_known_hosts_line(authorities["host_ssh"])
        self._user_ca_keys = [key.public for key in authorities["user_ssh"].spec.active_keys]

    def signer(self, ca_type: CAType) -> CASigner:
        return self._signers[ca_type]

    def user_identity(
        self,
        user: User,
        roles: list[Role],
        ttl: timedelta | None,
        request_ids: tuple[str, ...] = (),
        role_set: RoleSet | None = None,
        not_after: datetime | None = None,
        resources: tuple[str, ...] = (),
    ) -> Identity:
        """The identity to certify; `role_set`, if given, is `roles` evaluated for the
        user's traits (else it is built here). It expires after `ttl` (capped by the
        roles), and never after `not_after`. `request_ids` are the access requests whose
        roles are among `roles`; `resources`, if any, the only ones it may reach."""
        if role_set is None:
            role_set = RoleSet(roles, user.spec.traits)
        lifetime = role_set.adjust_ttl(ttl or DEFAULT_USER_TTL)
        expires = self._clock.now() + lifetime
        if not_after is not None:
            expires = min(expires, not_after)
        return Identity(
            username=user.name,
            roles=tuple(role.name for role in roles),
            traits=user.spec.traits,
            logins=tuple(role_set.logins()),
            request_ids=request_ids,
            resources=resources,
            expires=expires,
            mfa_verified=False,
            kind="user",
        )

    def signing_time(self, not_before: datetime | None = None) -> datetime:
        """The moment certificates issued now start from: now in whole seconds (what
        both certificate formats can say), or `not_before` if that is later."""
        now = self._clock.now().replace(microsecond=0)
        return max(now, not_before) if not_before is not None else now

    def issue_user(
        self,
        identity: Identity,
        role_set: RoleSet,
        public_key: str,
        not_before: datetime | None = None,
    ) -> CertBundle:
        """Both certificates for `identity`; they start at `signing_time(not_before)`
        (less the clock-skew allowance), which `identity.issued` then says."""
        now = self.signing_time(not_before)
        identity = replace(identity, issued=now - CLOCK_SKEW)
        options = role_set.options()
        key = load_ssh_public_key_text(public_key)  # parsed once, used by both signers
        ssh_cert = self._signers["user_ssh"].sign_user_ssh(
            key,
            identity,
            valid_after=now,
            valid_before=identity.expires,
            permit_port_forwarding=options.port_forwarding,
            permit_agent_forwarding=options.forward_agent,
        )
        tls_cert = self._signers["user_tls"].sign_tls(
            key,
            identity,
            not_before=now,
            not_after=identity.expires,
        )
        return replace(
            self._bundle(identity, ssh_cert, tls_cert),
            kubernetes_groups=role_set.kubernetes_groups(),
            kubernetes_users=role_set.kubernetes_users(),
        )

    def issue_service(
        self,
        name: str,
        system_role: str,
        public_key: str,
        principals: list[str],
        ttl: timedelta = SERVICE_TTL,
    ) -> CertBundle:
        """A host identity: host SSH cert (for nodes' SSH servers) and a host TLS cert
        that is both client (mTLS to auth) and server (its own listeners)."""
        now = self.signing_time()
        identity = Identity(
            username=name,
            roles=(system_role,),
            logins=tuple(principals),
            expires=now + ttl,
            kind="service",
            issued=now - CLOCK_SKEW,
        )
        key = load_ssh_public_key_text(public_key)
        ssh_cert = self._signers["host_ssh"].sign_host_ssh(
            key, name, principals, valid_before=identity.expires, valid_after=now
        )
        dns = [p for p in principals if not _is_ip(p)]
        ips = [p for p in principals if _is_ip(p)]
        tls_cert = self._signers["host_tls"].sign_tls(
            key,
            identity,
            not_before=now,
            not_after=identity.expires,
            dns_names=dns,
            ip_addresses=ips,
            server=True,
        )
        return self._bundle(identity, ssh_cert, tls_cert)

    def tls_ca_certs(self) -> list[str]:
        """PEM certificates of the host TLS CA, then the user TLS CA."""
        return list(self._tls_cas)

    def _bundle(self, identity: Identity, ssh_cert: str, tls_cert: str) -> CertBundle:
        return CertBundle(
            identity=identity,
            ssh_cert=ssh_cert,
            tls_cert=tls_cert,
            tls_cas=list(self._tls_cas),
            known_hosts=self._known_hosts,
            user_ca_keys=list(self._user_ca_keys),
        )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
