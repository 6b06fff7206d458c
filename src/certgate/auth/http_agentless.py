"""Auth API routes for agentless OpenSSH servers (see auth/agentless.py).

    POST /v1/agentless/host-certs         `cgctl auth sign --host`: a host key and
                                          certificate for a stock sshd
    POST /v1/agentless/proxy-host-certs   a proxy's host certificate for a node's name
    POST /v1/agentless/onward-user-certs  a proxy's one-minute user certificate for
                                          one login, made from the user's certificate

Who may call, checked before any work (AuthAPI._handler):

- host-certs: `create` on `cert_authority` — signing with a CA is creating with it.
  The auth host's admin identity and the `editor` preset have it; no other preset does.
- proxy-*: proxies only (the `agentless` pseudo-resource, granted to the Proxy system
  role and refused to every user whatever their roles say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.api.duration import parse_duration
from certgate.api.identity import Identity
from certgate.auth import permissions as perm
from certgate.auth.agentless import AgentlessCerts
from certgate.auth.http_body import json_body, required_str, str_list

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI


def add_agentless_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    routes = AgentlessRoutes(AgentlessCerts(api.server))
    add = api._handler
    router.add_post("/v1/agentless/host-certs", add("cert_authority", "create", routes.host_certs))
    router.add_post(
        "/v1/agentless/proxy-host-certs", add(perm.AGENTLESS, "create", routes.proxy_host_certs)
    )
    router.add_post(
        "/v1/agentless/onward-user-certs",
        add(perm.AGENTLESS, "create", routes.onward_user_certs),
    )


class AgentlessRoutes:
    def __init__(self, certs: AgentlessCerts) -> None:
        self._certs = certs

    async def host_certs(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        body = await json_body(request)
        ttl = body.get("ttl")
        signed = await self._certs.sign_openssh_host(
            required_str(body, "host"),
            str_list(body, "principals"),
            parse_duration(str(ttl)) if ttl else None,
            caller.username,
        )
        return {
            "private_key": signed.private_key,
            "public_key": signed.public_key,
            "certificate": signed.certificate,
            "principals": signed.principals,
            "expires": signed.expires.isoformat(),
            "user_ca": signed.user_ca,
        }

    async def proxy_host_certs(self, request: web.Request, caller: Identity | None) -> Any:
        body = await json_body(request)
        signed = await self._certs.sign_proxy_host(
            required_str(body, "node"), required_str(body, "public_key")
        )
        return {"certificate": signed.certificate, "expires": signed.expires.isoformat()}

    async def onward_user_certs(self, request: web.Request, caller: Identity | None) -> Any:
        body = await json_body(request)
        signed = await self._certs.sign_onward_user(
            required_str(body, "certificate"),
            required_str(body, "login"),
            required_str(body, "node"),
            required_str(body, "public_key"),
        )
        return {"certificate": signed.certificate, "expires": signed.expires.isoformat()}
