"""Auth API route for `cgctl auth sign --user` (see auth/user_certs.py).

    POST /v1/users/{name}/certs {public_key, ttl}   -> a certificate bundle for NAME

Who may call, checked before any work: `create` on `cert_authority` (signing with a CA
is creating with it, as for `cgctl auth sign --host`) and `update` on `user` (these
certificates speak for the user). The auth host's admin identity and the `editor`
preset have both; no other preset has either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.api.duration import parse_duration
from certgate.api.identity import Identity
from certgate.auth.http_body import json_body, required_str
from certgate.auth.user_certs import UserCerts

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI


def add_user_cert_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    certs = UserCerts(api.server)

    async def sign(request: web.Request, caller: Identity | None) -> Any:
        caller = await api.authorizer.check(caller, "user", "update")
        body = await json_body(request)
        ttl = body.get("ttl")
        bundle = await certs.sign(
            request.match_info["name"],
            required_str(body, "public_key"),
            parse_duration(str(ttl)) if ttl else None,
            caller.username,
        )
        return bundle.to_dict()

    router.add_post("/v1/users/{name}/certs", api._handler("cert_authority", "create", sign))
