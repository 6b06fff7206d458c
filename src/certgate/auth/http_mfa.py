"""Auth API route for a step-up: a signed-in user proves they are at the keyboard.

    POST /v1/mfa/verify {otp}   -> 204 if `otp` is a fresh one-time code of the caller

The code is checked for the caller's own user only (the name comes from the verified
certificate, never from the body), as single-use as at login, and a wrong one counts
towards the same lockout (auth/login.py `check_code`); audited as `user.mfa.verify`.
The web UI asks for one before an access-request review, so a stolen browser session
alone cannot approve anything. Any user may call it for themselves (`self`), through
the proxy's forwarding like every user call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.api.identity import Identity
from certgate.auth import permissions as perm
from certgate.auth.http_body import json_body
from certgate.errors import AccessDenied, BadParameter

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

# A code is six digits; anything much longer is not one (and is not worth hashing).
MAX_CODE_CHARS = 64


def add_mfa_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    async def verify(request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        if caller.kind != "user":
            raise AccessDenied("access denied: only users verify their own one-time codes")
        body = await json_body(request)
        otp = body.get("otp")
        if not isinstance(otp, str) or not otp.strip():
            raise BadParameter("enter the one-time code from your authenticator app")
        if len(otp) > MAX_CODE_CHARS:
            raise BadParameter(f'"otp" must be at most {MAX_CODE_CHARS} characters')
        await api.server.login_checker.check_code(caller.username, otp, api.client_addr(request))
        return None

    router.add_post("/v1/mfa/verify", api._handler(perm.SELF, "update", verify))
