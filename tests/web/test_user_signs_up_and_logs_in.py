"""A new user signs up from an invite in a browser, logs in, sees the nodes, logs out;
a lock ends the web session at once."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser

from tests.support.cluster import PASSWORD, Cluster
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up


def test_sign_up_log_in_see_nodes_log_out(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "alice")
    page = log_in(browser, cluster, "alice", otp)
    assert page.url.endswith("/web/nodes"), page.content()
    assert page.locator("tr[data-node]").count() == 1
    assert "env=dev" in page.locator("#nodes").inner_text()
    page.click("details.connect summary")
    assert page.locator("details.connect a").all_inner_texts() == ["alice"]
    shot(page, tmp_path, "nodes")
    # Search that matches nothing, then the label filter that matches the node.
    page.fill("#q", "no-such-node")
    page.click(".filters button")
    assert page.locator("#node-count").inner_text() == "0 nodes"
    assert page.locator("#nodes tbody").inner_text() == "No node matches."
    page.fill("#q", "")
    page.select_option("#label", "env=dev")
    page.click(".filters button")
    assert page.locator("#node-count").inner_text() == "1 node"

    # A stale or mistyped link: a page with the way back, the menu still there.
    answer = page.goto(f"https://{cluster.proxy_addr}/web/nodes/old-bookmark")
    assert answer is not None and answer.status == 404
    assert page.locator("h1").inner_text() == "Not found"
    assert page.locator("header nav a:text-is('Recordings')").count() == 1
    page.click("text=Back to the start page")
    assert page.url.endswith("/web/nodes")

    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["__Host-certgate_session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"

    page.click("#logout")
    assert page.url.endswith("/web/login")
    # The old cookie is dead on the server, not just forgotten by the browser.
    other = browser.new_context(ignore_https_errors=True)
    other.add_cookies([session])  # type: ignore[list-item]
    stale = other.new_page()
    stale.goto(f"https://{cluster.proxy_addr}/web/nodes")
    assert "/web/login" in stale.url
    other.close()
    page.context.close()


def test_wrong_code_is_refused_with_a_reason(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "bob")
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"https://{cluster.proxy_addr}/web/login")
    page.fill("#user", "bob")
    page.fill("#password", PASSWORD)
    page.fill("#otp", "000000" if otp.next_code() != "000000" else "111111")
    page.click("button[type=submit]")
    assert "/web/login" in page.url
    assert page.locator("p.error").inner_text().startswith("access denied")
    shot(page, tmp_path, "login-refused")
    context.close()


def test_a_lock_ends_the_web_session(cluster: Cluster, browser: Browser, tmp_path: Path) -> None:
    otp = sign_up(cluster, browser, tmp_path, "carol")
    page = log_in(browser, cluster, "carol", otp)
    assert page.url.endswith("/web/nodes")
    page.reload()
    assert page.url.endswith("/web/nodes")  # would have stayed logged in
    cluster.cgctl("lock", "--user=carol", "--message=investigating", "--ttl=5m")

    def logged_out() -> bool:
        page.goto(f"https://{cluster.proxy_addr}/web/nodes")
        return "/web/login" in page.url

    eventually(logged_out, timeout=10)
    page.context.close()


def test_forged_cross_site_post_is_refused(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "dave")
    page = log_in(browser, cluster, "dave", otp)
    assert page.url.endswith("/web/nodes")
    proxy = f"https://{cluster.proxy_addr}"
    # The same form as our logout button, from a page of another origin. Playwright
    # serves it under a made-up origin; Chromium sends that as Origin.
    page.context.route(
        "https://evil.test/",
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form id="f" method="post" action="{proxy}/web/logout">'
            '<input name="csrf" value="guess"></form>'
            '<button id="go" onclick="document.getElementById(\'f\').submit()">go</button>',
        ),
    )
    evil = page.context.new_page()
    evil.goto("https://evil.test/")
    with evil.expect_navigation():
        evil.click("#go")
    assert "cross-site request refused" in evil.content()
    # Still logged in: the forged logout changed nothing.
    page.reload()
    assert page.url.endswith("/web/nodes")
    # The token check alone refuses too (same origin, wrong token).
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: 'POST',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: 'csrf=guess', redirect: 'manual'})).status""",
        f"{proxy}/web/logout",
    )
    assert status == 403
    page.reload()
    assert page.url.endswith("/web/nodes")
    page.context.close()
