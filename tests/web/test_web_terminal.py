"""The web terminal: a shell on a node from the browser, enforced and recorded by the
node as for cgsh ssh; a lock closes it at once with the lock's message."""

from __future__ import annotations

import asyncio
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
from playwright.sync_api import Browser, Page

from tests.support.cluster import Cluster
from tests.support.unix import ensure_user
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up


def _screen(page: Page) -> str:
    return page.locator(".xterm-rows").inner_text()


def _open_terminal(page: Page, login: str) -> None:
    page.click("details.connect summary")
    page.click(f"details.connect a:text-is('{login}')")
    eventually(lambda: page.locator("#term-status").inner_text() == "connected")


def test_whoami_in_the_web_terminal_then_a_lock_closes_it(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    ensure_user("webterm")
    otp = sign_up(cluster, browser, tmp_path, "webterm")
    page = log_in(browser, cluster, "webterm", otp)
    _open_terminal(page, "webterm")
    page.locator("#terminal").click()
    page.keyboard.type("whoami\n")
    eventually(lambda: "\nwebterm" in _screen(page))
    shot(page, tmp_path, "terminal")

    # The shell is live (it would have shown more output), until the lock.
    page.keyboard.type("echo still-here\n")
    eventually(lambda: "\nstill-here" in _screen(page))
    cluster.cgctl("lock", "--user=webterm", "--message=under investigation", "--ttl=5m")
    eventually(lambda: "under investigation" in page.locator("#term-status").inner_text())
    assert page.locator("#reconnect").is_visible()
    shot(page, tmp_path, "terminal-locked")
    page.context.close()


def test_a_websocket_from_another_origin_is_refused(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    ensure_user("wsorigin")
    otp = sign_up(cluster, browser, tmp_path, "wsorigin")
    page = log_in(browser, cluster, "wsorigin", otp)
    proxy = f"{cluster.proxy_addr}"
    url = f"wss://{proxy}/web/terminal/ws?node=node-1&login=wsorigin"
    script = """(url) => new Promise((done) => {
        const ws = new WebSocket(url);
        ws.onopen = () => done("open");
        ws.onerror = () => done("refused");
    })"""
    # From our own page the socket opens (so the refusal below is the origin's doing).
    assert page.evaluate(script, url) == "open"
    page.context.route(
        "https://evil.test/",
        lambda route: route.fulfill(content_type="text/html", body="<p>hi</p>"),
    )
    evil = page.context.new_page()
    evil.goto("https://evil.test/")
    assert evil.evaluate(script, url) == "refused"
    # SameSite=Strict already keeps the cookie from that page; the origin check must
    # refuse on its own too, with the cookie presented.
    cookie = next(c for c in page.context.cookies() if c["name"] == "__Host-certgate_session")
    assert _handshake(url, cookie["value"], f"https://{proxy}") == 101
    assert _handshake(url, cookie["value"], "https://evil.test") == 403
    page.context.close()


def _handshake(url: str, cookie: str, origin: str) -> int:
    async def attempt() -> int:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        headers = {"Cookie": f"__Host-certgate_session={cookie}", "Origin": origin}
        async with aiohttp.ClientSession() as client:
            try:
                async with client.ws_connect(url, ssl=context, headers=headers) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    # Playwright's sync API holds this thread's event loop: use another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, attempt()).result(timeout=30)
