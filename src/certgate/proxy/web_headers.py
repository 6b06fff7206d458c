"""Security headers on every answer of the proxy's web listener.

Set in `on_response_prepare`, the last moment before headers go out, rather than in a
middleware's return path: streamed answers (the API forwarded to auth) are prepared
inside their handler, and aiohttp's own errors (404, 405) never reach a middleware's
return, yet all of them must carry the headers.

    Cache-Control: no-store            invite pages show a TOTP secret, logins return
                                       certificates: nothing here belongs in a cache
    Content-Security-Policy            our own files only; no inline script or style;
                                       no framing (frame-ancestors), no plugins, no <base>
    X-Frame-Options: DENY              framing refused for browsers without CSP 2
    Referrer-Policy: no-referrer       invite URLs carry a token: never leak it onward
    X-Content-Type-Options: nosniff    a JSON answer is never run as a script
    Strict-Transport-Security          only with a configured (real) certificate: pinning
                                       HTTPS to the cluster's self-signed one would lock
                                       browsers out once the admin installs a real one
"""

from __future__ import annotations

from aiohttp import web

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HSTS = "max-age=31536000"

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def install_security_headers(app: web.Application, *, hsts: bool) -> None:
    """Every answer of `app` gets SECURITY_HEADERS, and HSTS when `hsts`."""
    headers = dict(SECURITY_HEADERS)
    if hsts:
        headers["Strict-Transport-Security"] = HSTS

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    app.on_response_prepare.append(add_headers)
