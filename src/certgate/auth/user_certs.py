"""Certificates an admin signs for a user without that user logging in:
`cgctl auth sign --user=NAME` makes the identity a plugin or a script runs as.

The user's roles as stored now decide what the certificates carry, as at a login; the
lifetime is what the admin asks for, capped by those roles' `max_session_ttl` (the
`access-plugin` preset allows 30 days) and by MAX_SIGNED_TTL. A locked user gets
nothing. Each signing is audited with who asked.
"""

from __future__ import annotations

from datetime import timedelta

from certgate.api.bundle import CertBundle
from certgate.auth.server import AuthServer
from certgate.errors import AccessDenied, BadParameter, NotFound

DEFAULT_SIGNED_TTL = timedelta(hours=8)
MAX_SIGNED_TTL = timedelta(days=366)


class UserCerts:
    def __init__(self, server: AuthServer) -> None:
        self._server = server

    async def sign(self, name: str, public_key: str, ttl: timedelta | None, by: str) -> CertBundle:
        server = self._server
        ttl = ttl or DEFAULT_SIGNED_TTL
        if ttl <= timedelta(0) or ttl > MAX_SIGNED_TTL:
            raise BadParameter(f"ttl must be longer than 0s and at most {MAX_SIGNED_TTL.days}d")
        try:
            user, roles = await server.user_with_roles(name, [])
        except NotFound:
            raise NotFound(f'user "{name}" not found') from None
        try:
            await server.check_not_locked(user.name, user.spec.roles)
        except AccessDenied as exc:
            await server.audit.emit(
                "cert.create.failure", user=user.name, error=exc.message, issued_by=by
            )
            exc.audited = True
            raise
        role_set = server.role_sets.get(roles, user.spec.traits)
        identity = server.issuer.user_identity(user, roles, ttl, role_set=role_set)
        bundle = server.issuer.issue_user(identity, role_set, public_key)
        await server.audit.emit(
            "cert.create",
            user=user.name,
            roles=list(identity.roles),
            logins=list(identity.logins),
            expires=identity.expires.isoformat(),
            issued_by=by,
        )
        return bundle
