"""The web terminal: a shell on a node from the browser, enforced and recorded by the
node as for cgsh ssh; a lock closes it at once with the lock's message."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page

from tests.support.cluster import BIN, Cluster
from tests.support.unix import ensure_user
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up


def _screen(page: Page) -> str:
    return page.locator(".xterm-rows").inner_text()


def _open_terminal(page: Page, login: str) -> None:
    page.click("details.connect summary")
    page.click(f"details.connect a:text-is('{login}')")
    eventually(lambda: page.locator("#term-status").inner_text() == "connected")


def test_whoami_in_the_web_terminal_is_recorded_and_plays(
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
    page.keyboard.type("exit\n")
    eventually(lambda: "exit status 0" in page.locator("#term-status").inner_text())

    # The node recorded it, as for cgsh ssh: it appears once uploaded.
    def listed() -> bool:
        page.goto(f"https://{cluster.proxy_addr}/web/recordings")
        return page.locator("tr[data-recording]").count() == 1

    eventually(listed, timeout=30)
    shot(page, tmp_path, "recordings")
    page.click("tr[data-recording] a:text-is('Play')")
    page.locator(".ap-player").wait_for()
    page.select_option("#speed", "8")
    page.locator(".ap-play-button").click()
    eventually(lambda: "webterm" in page.locator(".ap-term").inner_text(), timeout=20)
    shot(page, tmp_path, "player")
    with page.expect_download() as download:
        page.click("#download")
    cast = tmp_path / download.value.suggested_filename
    download.value.save_as(cast)
    assert cast.suffix == ".cast"
    played = subprocess.run(
        [str(BIN / "asciinema"), "cat", str(cast)], capture_output=True, text=True, timeout=30
    )
    assert played.returncode == 0, played.stderr
    assert "whoami" in played.stdout and "webterm" in played.stdout
    page.context.close()


def test_a_lock_closes_the_open_web_terminal(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    ensure_user("lockterm")
    otp = sign_up(cluster, browser, tmp_path, "lockterm")
    page = log_in(browser, cluster, "lockterm", otp)
    _open_terminal(page, "lockterm")
    page.locator("#terminal").click()
    # The shell is live (it would have shown more output), until the lock.
    page.keyboard.type("echo still-here\n")
    eventually(lambda: "\nstill-here" in _screen(page))
    cluster.cgctl("lock", "--user=lockterm", "--message=under investigation", "--ttl=5m")
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
    """The status of a WebSocket opening handshake, sent by hand with these headers."""
    parts = urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Origin: {origin}\r\nCookie: __Host-certgate_session={cookie}\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            tls.sendall(request.encode())
            status_line = tls.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def test_a_login_link_does_not_open_a_terminal(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    """A link someone sends (`/web/login?next=/web/terminal?...`) does not open a shell,
    or join the sender's session, in the user's name the moment they log in."""
    ensure_user("webnext")
    otp = sign_up(cluster, browser, tmp_path, "webnext")
    for target in ("/web/terminal?node=node-1&login=webnext", "/web/./%74erminal?node=node-1"):
        page = log_in(browser, cluster, "webnext", otp, start=target)
        assert page.url.endswith("/web/nodes"), page.url
        assert page.locator("#terminal").count() == 0
        page.context.close()
    # No shell was started (a node sends its events within a second or so).
    time.sleep(2)
    started = cluster.cgctl(
        "audit", "ls", "--event=session.start", "--user=webnext", "--format=json"
    ).stdout
    assert json.loads(started) == []


def test_a_terminal_the_proxy_refuses_is_audited(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    """Refused by the proxy before any node is dialled (a join the roles do not allow,
    a node that is not there): the node never sees it, so the proxy writes the event."""
    ensure_user("webrefused")
    otp = sign_up(cluster, browser, tmp_path, "webrefused")
    page = log_in(browser, cluster, "webrefused", otp)
    session_id = "0f2b3c4d-5e6f-4a0b-8c9d-0e1f2a3b4c5d"
    base = f"https://{cluster.proxy_addr}/web/terminal"
    for query in (f"node=node-1&login=join:peer:{session_id}", "node=nowhere&login=webrefused"):
        page.goto(f"{base}?{query}")
        eventually(lambda: page.locator("#term-status").inner_text() != "connecting...")
    page.context.close()

    def refusals() -> list[dict[str, object]]:
        out = cluster.cgctl(
            "audit", "ls", "--event=session.rejected", "--user=webrefused", "--format=json"
        ).stdout
        return [e for e in json.loads(out) if e.get("kind") == "web"]

    found = eventually(lambda: len(refusals()) >= 2 and refusals(), timeout=15)
    assert {e["login"] for e in found} == {f"join:peer:{session_id}", "webrefused"}
    assert all(e["server"] == "proxy" for e in found)
