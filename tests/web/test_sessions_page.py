"""/web/sessions lists the live sessions a user may see, as `cgsh sessions ls`: a web
terminal open in one tab shows up in another, can be watched from there read-only, and
leaves the list when it ends."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Page

from tests.support.cluster import Cluster
from tests.support.unix import ensure_user
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up


def _rows(page: Page, cluster: Cluster) -> list[str]:
    page.goto(f"https://{cluster.proxy_addr}/web/sessions")
    rows = page.locator("#sessions tr[data-session]")
    return [rows.nth(i).inner_text() for i in range(rows.count())]


def test_the_sessions_page_lists_a_live_web_terminal(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    ensure_user("wsess")
    otp = sign_up(cluster, browser, tmp_path, "wsess")
    terminal = log_in(browser, cluster, "wsess", otp)
    listing = terminal.context.new_page()
    assert _rows(listing, cluster) == []
    terminal.click("details.connect summary")
    terminal.click("details.connect a:text-is('wsess')")
    eventually(lambda: terminal.locator("#term-status").inner_text() == "connected")

    eventually(lambda: len(_rows(listing, cluster)) == 1, timeout=20)
    row = _rows(listing, cluster)[0]
    assert "wsess" in row and "node-1" in row, row
    shot(listing, tmp_path, "sessions")

    # Watch: the same session in a second web terminal, read-only.
    listing.click("#sessions tr[data-session] a.watch")
    eventually(lambda: listing.locator("#term-status").inner_text() == "connected")
    terminal.locator("#terminal").click()
    terminal.keyboard.type("echo seen-by-$((6*7))\n")
    eventually(lambda: "seen-by-42" in terminal.locator(".xterm-rows").inner_text())
    eventually(lambda: "seen-by-42" in listing.locator(".xterm-rows").inner_text())
    shot(listing, tmp_path, "watching")
    listing.locator("#terminal").click()
    listing.keyboard.type("echo typed-by-$((6*8))\n")  # an observer's keys go nowhere
    terminal.keyboard.type("echo done-$((6*9))\n")
    eventually(lambda: "done-54" in listing.locator(".xterm-rows").inner_text())
    assert "typed-by-48" not in terminal.locator(".xterm-rows").inner_text()

    terminal.locator("#terminal").click()
    terminal.keyboard.type("exit\n")
    eventually(lambda: "exit status 0" in terminal.locator("#term-status").inner_text())
    eventually(lambda: _rows(listing, cluster) == [], timeout=20)
    terminal.context.close()


JOIN_ROLES = """\
kind: role
metadata: {name: web-pair}
spec:
  allow:
    join_sessions: [{roles: [access], kinds: [ssh], modes: [observer, peer]}]
---
kind: role
metadata: {name: web-watch-only}
spec:
  allow:
    join_sessions: [{roles: [access], kinds: [ssh], modes: [observer]}]
"""


def test_a_peer_joins_from_the_browser_and_types_into_the_session(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    cluster.cgctl("create", "-f", "-", input=JOIN_ROLES)
    ensure_user("wowner")
    owner_otp = sign_up(cluster, browser, tmp_path, "wowner")
    pair_otp = sign_up(cluster, browser, tmp_path, "wpair", roles="web-pair")
    watch_otp = sign_up(cluster, browser, tmp_path, "wwatch", roles="web-watch-only")
    owner = log_in(browser, cluster, "wowner", owner_otp)
    owner.click("details.connect summary")
    owner.click("details.connect a:text-is('wowner')")
    eventually(lambda: owner.locator("#term-status").inner_text() == "connected")

    # A peer (no login on the node, no access to its labels) joins and types.
    pair = log_in(browser, cluster, "wpair", pair_otp)
    eventually(lambda: len(_rows(pair, cluster)) == 1, timeout=20)
    row = pair.locator("#sessions tr[data-session]")
    assert row.locator("a.watch").count() == 1 and row.locator("a.join").count() == 1
    shot(pair, tmp_path, "sessions-join")
    row.locator("a.join").click()
    eventually(lambda: pair.locator("#term-status").inner_text() == "connected")
    assert pair.locator("#term-heading").inner_text().startswith("joined session")
    pair.locator("#terminal").click()
    pair.keyboard.type("echo hi-from-peer\n")
    eventually(lambda: "\nhi-from-peer" in owner.locator(".xterm-rows").inner_text())
    shot(pair, tmp_path, "session-peer")

    # An observer-only role gets no Join, and the peer URL itself is refused.
    watch = log_in(browser, cluster, "wwatch", watch_otp)
    eventually(lambda: len(_rows(watch, cluster)) == 1, timeout=20)
    listed = watch.locator("#sessions tr[data-session]")
    assert listed.locator("a.watch").count() == 1 and listed.locator("a.join").count() == 0
    peer_url = pair.url
    watch.goto(peer_url)
    eventually(lambda: "may not join" in watch.locator("#term-status").inner_text())
    watch.goto(peer_url.replace("join%3Apeer", "join%3Aobserver"))  # what it may do
    eventually(lambda: watch.locator("#term-status").inner_text() == "connected")
    eventually(lambda: "hi-from-peer" in watch.locator(".xterm-rows").inner_text())

    owner.locator("#terminal").click()
    owner.keyboard.type("exit\n")
    eventually(lambda: "exit status 0" in owner.locator("#term-status").inner_text())
    for page in (owner, pair, watch):
        page.context.close()
