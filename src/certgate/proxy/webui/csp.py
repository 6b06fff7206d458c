"""The one page that needs more than the proxy's Content-Security-Policy allows.

asciinema-player runs its terminal emulator as WebAssembly, which `script-src 'self'`
forbids compiling. `'wasm-unsafe-eval'` allows WebAssembly compilation and nothing
else (no JavaScript eval, no inline script), and only the player page gets it: this
hook runs after web_headers.py set the policy on every answer. Every build asciinema-player
3.18.0 ships (monolithic, UI + worker) compiles WebAssembly, so there is no build to
pick instead; tests/web/test_player_csp.py shows it and fails once that changes.
"""

from __future__ import annotations

import re

from aiohttp import web

from certgate.proxy.web_headers import CONTENT_SECURITY_POLICY

PLAYER_PAGE = re.compile(r"/web/recordings/[0-9a-f-]{36}")
PLAYER_POLICY = CONTENT_SECURITY_POLICY.replace(
    "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"
)


def install_player_policy(app: web.Application) -> None:
    async def widen(request: web.Request, response: web.StreamResponse) -> None:
        if PLAYER_PAGE.fullmatch(request.path):
            response.headers["Content-Security-Policy"] = PLAYER_POLICY

    app.on_response_prepare.append(widen)
