"""The invite page a new user opens in a browser: QR code, secret, password and code."""

from __future__ import annotations

import re
import shlex
import ssl
import time
import urllib.parse
import urllib.request

import pyotp

from tests.support.cluster import PASSWORD, Cluster, User, invite_token
from tests.support.otp import STEP, OtpDevice


def _fetch(url: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        with urllib.request.urlopen(url, data=data, context=context, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_new_user_sets_up_through_the_page(cluster: Cluster) -> None:
    out = cluster.cgctl("users", "add", "page-user", "--roles=access", "--logins=pu").stdout
    url = next(word for word in out.split() if "/web/invite/" in word)
    assert url.startswith(f"https://{cluster.proxy_addr}/web/invite/")

    status, page = _fetch(url)
    assert status == 200
    assert "Welcome to test.certgate, page-user" in page
    assert "<svg" in page  # the QR code, drawn inline
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page)
    assert secret
    totp = pyotp.TOTP(secret.group(1))

    status, page = _fetch(
        url, {"password": "short", "password_confirm": "short", "otp": totp.now()}
    )
    assert status == 400
    assert "password must be at least 12 characters" in page

    status, page = _fetch(
        url, {"password": PASSWORD, "password_confirm": PASSWORD + "x", "otp": totp.now()}
    )
    assert status == 400 and "the two passwords differ" in page

    status, page = _fetch(
        url, {"password": PASSWORD, "password_confirm": PASSWORD, "otp": totp.now()}
    )
    assert status == 200
    assert "your account is ready" in page
    # The command the page shows works as shown (the password and code from stdin).
    shown = re.search(r"Log in with: (cgsh login [^<]+)</p>", page)
    assert shown, page
    assert shown.group(1) == (
        f"cgsh login --proxy=https://{cluster.proxy_addr} --user=page-user --insecure"
    )
    device = OtpDevice(secret.group(1))
    device.last_step = int(time.time()) // STEP  # the code the form took
    user = User("page-user", PASSWORD, device, cluster.workdir / "homes" / "page-user")
    argv = shlex.split(shown.group(1))[1:]
    result = cluster.cgsh(user, *argv, f"--otp={device.next_code()}", input=PASSWORD + "\n")
    assert "Logged in as:       page-user" in result.stdout

    status, page = _fetch(url)
    assert status == 404
    assert "invite not found or expired" in page


def test_the_front_page_shows_the_login_command(cluster: Cluster) -> None:
    status, page = _fetch(f"https://{cluster.proxy_addr}/")
    assert status == 200
    assert f"`cgsh login --proxy=https://{cluster.proxy_addr} --insecure`" in page


def test_the_page_escapes_what_it_shows(cluster: Cluster) -> None:
    status, page = _fetch(f"https://{cluster.proxy_addr}/web/invite/<script>alert(1)</script>")
    assert status in (400, 404)
    assert "<script>" not in page


def test_unknown_invite_tokens_get_a_clear_page(cluster: Cluster) -> None:
    status, page = _fetch(f"https://{cluster.proxy_addr}/web/invite/{'0' * 32}")
    assert status == 404
    assert "ask your admin for a new one" in page
    assert invite_token(f"/web/invite/{'0' * 32}") == "0" * 32
