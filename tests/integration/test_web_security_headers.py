"""Every answer of the proxy's web listener tells browsers not to cache it, frame it,
sniff it, leak its URL onward or run inline script in it; HSTS only with a configured
certificate. Checked with real HTTPS requests on the pages an attacker would aim at
(the invite page holds a TOTP secret, login answers hold certificates)."""

from __future__ import annotations

import re
import ssl
import urllib.request
from email.message import Message
from pathlib import Path

from tests.support.cluster import Cluster, invite_token
from tests.support.tlsfiles import proxy_config, self_signed


def _get(url: str, data: bytes | None = None) -> tuple[int, Message, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, data=data)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def _assert_secure(headers: Message) -> None:
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy


def test_every_kind_of_answer_carries_the_headers(cluster: Cluster) -> None:
    out = cluster.cgctl("users", "add", "headers-user", "--roles=access").stdout
    token = invite_token(out)
    base = f"https://{cluster.proxy_addr}"
    answers = [
        _get(f"{base}/web/invite/{token}"),  # the TOTP secret
        _get(f"{base}/v1/invites/{token}"),  # the same as JSON
        _get(f"{base}/v1/login", data=b"{}"),  # a refusal
        _get(f"{base}/v1/api/users"),  # the forwarded API, without a certificate
        _get(f"{base}/"),
        _get(f"{base}/no/such/page"),  # aiohttp's own 404
        _get(f"{base}/web/static/app.css"),
    ]
    statuses = [status for status, _, _ in answers]
    assert statuses[0] == 200 and statuses[1] == 200 and statuses[5] == 404, statuses
    for _, headers, _ in answers:
        _assert_secure(headers)
        # The cluster's own certificate: HSTS would pin browsers to it.
        assert headers["Strict-Transport-Security"] is None


def test_the_invite_page_needs_no_inline_script_or_style(cluster: Cluster) -> None:
    out = cluster.cgctl("users", "add", "csp-user", "--roles=access").stdout
    base = f"https://{cluster.proxy_addr}"
    status, _, page = _get(f"{base}/web/invite/{invite_token(out)}")
    assert status == 200 and "<svg" in page and 'id="totp-secret"' in page
    # What the policy would block: inline <script>, <style>, style= or on*= attributes.
    assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", page)
    stylesheets = re.findall(r'<link rel="stylesheet" href="([^"]+)">', page)
    assert stylesheets == ["/web/static/app.css"]
    status, headers, css = _get(base + stylesheets[0])
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert ".qr svg" in css
    assert _get(f"{base}/web/static/..%2Fweb.py")[0] == 404


def test_hsts_only_with_a_configured_certificate(workdir: Path) -> None:
    cert, key = self_signed(workdir / "tls")
    cluster = Cluster(workdir, extra_args=["--config", str(proxy_config(workdir, cert, key))])
    cluster.start()
    try:
        status, headers, _ = _get(f"https://{cluster.proxy_addr}/v1/ping")
        assert status == 200
        _assert_secure(headers)
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
    finally:
        cluster.stop()
