"""/web/invite/<token>: a new user's sign-up (QR code, the secret as text, password,
first code). The token in the URL is the one secret a URL may carry: it is single-use
and short-lived, and Referrer-Policy keeps it from leaking onward."""

from __future__ import annotations

from typing import Any

import qrcode
import qrcode.image.svg
from aiohttp import web
from markupsafe import Markup

from certgate.errors import BadParameter, CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.forms import read_form
from certgate.proxy.webui.render import page


def _safe(token: str) -> str:
    # Tokens are hex; refuse anything that could change the path on the way to auth.
    if not token or len(token) > 128 or not token.isalnum():
        raise BadParameter("invite not found or expired: ask your admin for a new one")
    return token


def login_command(request: web.Request, user: str, real_certificate: bool) -> str:
    """The login command that works as shown from where this page was reached."""
    words = ["cgsh login", f"--proxy=https://{request.host}", f"--user={user}"]
    if not real_certificate:
        words.append("--insecure")  # first login only: the certificate is then pinned
    return " ".join(words)


def _qr_svg(data: str) -> Markup:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage)
    # Drawn by qrcode from the otpauth URI: its own markup, no user text in it unescaped.
    return Markup(str(image.to_string(encoding="unicode")))


class InvitePages:
    def __init__(self, real_certificate: bool) -> None:
        self.real_certificate = real_certificate

    async def _invite(self, request: web.Request) -> dict[str, Any]:
        token = _safe(request.match_info["token"])
        answer: dict[str, Any] = await request.app[guard.AUTH_KEY].call(
            "GET", f"/v1/invites/{token}"
        )
        return answer

    def _form(
        self, request: web.Request, invite: dict[str, Any], error: str, status: int
    ) -> web.Response:
        return page(
            request,
            "invite.html",
            invitee=invite["user"],
            qr=_qr_svg(invite["totp_uri"]),
            secret=invite["totp_secret"],
            error=error,
            done="",
            status=status,
        )

    def _gone(self, request: web.Request, exc: CertgateError) -> web.Response:
        return page(request, "invite.html", invitee="", error=exc.message, done="", status=404)

    async def show(self, request: web.Request) -> web.Response:
        try:
            invite = await self._invite(request)
        except CertgateError as exc:
            return self._gone(request, exc)
        return self._form(request, invite, "", 200)

    async def submit(self, request: web.Request) -> web.Response:
        # No session yet: the URL's token is the credential, and the Origin check keeps
        # another site from posting a password of its choosing into someone's invite.
        guard.check_origin(request)
        form = await read_form(request)
        try:
            invite = await self._invite(request)
        except CertgateError as exc:
            return self._gone(request, exc)
        password = form.get("password", "")
        if password != form.get("password_confirm", password):
            return self._form(request, invite, "the two passwords differ", 400)
        try:
            await request.app[guard.AUTH_KEY].call(
                "POST",
                f"/v1/invites/{_safe(request.match_info['token'])}",
                json={"password": password, "otp": form.get("otp", "")},
                headers={"Certgate-Client-Addr": request.remote or ""},
            )
        except CertgateError as exc:
            return self._form(request, invite, exc.message, exc.http_status)
        command = login_command(request, invite["user"], self.real_certificate)
        return page(
            request, "invite.html", invitee=invite["user"], error="", done=command, status=200
        )
