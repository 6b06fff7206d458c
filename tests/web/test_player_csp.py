"""Why the player page's Content-Security-Policy allows `'wasm-unsafe-eval'` (csp.py):
the pinned asciinema-player runs its terminal emulator as WebAssembly, in every build it
ships (monolithic and split), and Chromium refuses to compile it under the proxy's own
policy. If an upgrade stops needing it, the first test fails: drop the exception then."""

from __future__ import annotations

from importlib import resources

from playwright.sync_api import Browser, Route

from certgate.proxy.web_headers import CONTENT_SECURITY_POLICY
from certgate.proxy.webui.csp import PLAYER_POLICY
from tests.support.wait import eventually

ORIGIN = "https://player.test"
PAGE = """<!doctype html><html><head>
<link rel="stylesheet" href="/asciinema-player.css">
<script src="/asciinema-player.js"></script><script src="/boot.js" defer></script>
</head><body><div id="player"></div></body></html>"""
BOOT = """window.addEventListener("load", () => AsciinemaPlayer.create(
  "/demo.cast", document.getElementById("player"), {autoPlay: true}));"""
CAST = '{"version": 2, "width": 40, "height": 5}\n[0.1, "o", "hello-from-cast\\r\\n"]\n'


def _plays(browser: Browser, policy: str) -> tuple[bool, list[str]]:
    vendor = resources.files("certgate.web") / "static" / "vendor"
    files = {
        "/": ("text/html", PAGE.encode()),
        "/boot.js": ("text/javascript", BOOT.encode()),
        "/demo.cast": ("application/x-asciicast", CAST.encode()),
        "/asciinema-player.js": ("text/javascript", (vendor / "asciinema-player.js").read_bytes()),
        "/asciinema-player.css": ("text/css", (vendor / "asciinema-player.css").read_bytes()),
    }

    def serve(route: Route) -> None:
        content_type, body = files[route.request.url.removeprefix(ORIGIN)]
        headers = {"Content-Security-Policy": policy}
        route.fulfill(status=200, content_type=content_type, body=body, headers=headers)

    context = browser.new_context()
    context.route(f"{ORIGIN}/**", serve)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text))
    page.goto(f"{ORIGIN}/")

    def drawn_or_refused() -> bool:
        refused = any("WebAssembly" in error for error in errors)
        return refused or "hello-from-cast" in page.locator("body").inner_text()

    eventually(drawn_or_refused, timeout=30)
    played = "hello-from-cast" in page.locator("body").inner_text()
    context.close()
    return played, errors


def test_the_player_does_not_run_under_the_proxys_own_policy(browser: Browser) -> None:
    played, errors = _plays(browser, CONTENT_SECURITY_POLICY)
    assert not played
    assert any("WebAssembly" in error for error in errors), errors


def test_the_player_runs_under_the_player_pages_policy(browser: Browser) -> None:
    played, errors = _plays(browser, PLAYER_POLICY)
    assert played, errors
