"""Join tokens and service identities: how a host becomes a node, proxy or kube service."""

from __future__ import annotations

import secrets
from datetime import timedelta

from certgate.api.bundle import CertBundle
from certgate.api.identity import SYSTEM_ADMIN, SYSTEM_KUBE, SYSTEM_NODE, SYSTEM_PROXY
from certgate.api.meta import Metadata
from certgate.api.token import Token, TokenSpec
from certgate.auth.ca import ca_pin
from certgate.auth.core import AuthCore, check_token_text
from certgate.errors import AccessDenied, BadParameter, NotFound

JOIN_ROLE_TO_SYSTEM = {"node": SYSTEM_NODE, "proxy": SYSTEM_PROXY, "kube": SYSTEM_KUBE}


class JoinAdmin(AuthCore):
    # join tokens and service identities ---------------------------------------------------

    async def add_token(self, roles: list[str], ttl: timedelta, by: str) -> Token:
        token = Token(
            metadata=Metadata(name=secrets.token_hex(16), expires=self.clock.now() + ttl),
            spec=TokenSpec(roles=roles, created_by=by),  # type: ignore[arg-type]
        )
        created = await self.tokens.create(token)
        await self.audit.emit(
            "token.create", user=by, roles=roles, expires=str(token.metadata.expires)
        )
        return created

    def ca_pin(self) -> str:
        return ca_pin(self.issuer.authorities["host_tls"])

    async def join(
        self,
        token_name: str,
        role: str,
        public_key: str,
        name: str,
        principals: list[str],
        client_addr: str,
    ) -> CertBundle:
        """A host proves it holds a join token and gets its service certificates."""
        system_role = JOIN_ROLE_TO_SYSTEM.get(role)
        if system_role is None:
            raise BadParameter(f'cannot join as "{role}": use node, proxy or kube')
        try:
            check_token_text(token_name)
            token = await self.tokens.get(token_name)
        except (NotFound, BadParameter):
            await self.audit.emit(
                "join.failure",
                name=name,
                role=role,
                addr=client_addr,
                error="unknown or expired token",
            )
            raise AccessDenied(
                "access denied: the join token is unknown or expired: "
                "create a new one with 'cgctl tokens add'"
            ) from None
        if role not in token.spec.roles:
            raise AccessDenied(f'access denied: this join token does not allow the role "{role}"')
        bundle = self.issue_service_identity(name, system_role, public_key, principals)
        await self.audit.emit("join", name=name, role=role, addr=client_addr)
        return bundle

    def issue_service_identity(
        self, name: str, system_role: str, public_key: str, principals: list[str]
    ) -> CertBundle:
        # `<name>.<cluster>` too, so `ssh web-1.example.com` through the proxy verifies.
        names = list(dict.fromkeys([name, f"{name}.{self.cluster_name}", *principals]))
        return self.issuer.issue_service(name, system_role, public_key, names)

    def issue_admin_identity(self, public_key: str) -> CertBundle:
        return self.issuer.issue_service(
            "admin", SYSTEM_ADMIN, public_key, ["admin"], ttl=timedelta(days=30)
        )
