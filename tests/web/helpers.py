"""Browser steps the web tests share: sign up from an invite, log in, screenshots."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Page

from tests.support.cluster import PASSWORD, Cluster
from tests.support.otp import OtpDevice


def shot(page: Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def sign_up(
    cluster: Cluster, browser: Browser, tmp_path: Path, name: str, roles: str = "access"
) -> OtpDevice:
    """`cgctl users add`, then the invite page in a browser, with a code computed
    from the secret the page shows."""
    out = cluster.cgctl("users", "add", name, f"--roles={roles}", f"--logins={name}").stdout
    url = next(word for word in out.split() if "/web/invite/" in word)
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(url)
    secret = page.locator("#totp-secret").inner_text()
    shot(page, tmp_path, "invite")
    otp = OtpDevice(secret)
    page.fill("#password", PASSWORD)
    page.fill("#password_confirm", PASSWORD)
    page.fill("#otp", otp.next_code())
    page.click("button[type=submit]")
    assert "your account is ready" in page.content(), page.content()
    shot(page, tmp_path, "invite-done")
    context.close()
    return otp


def log_in(
    browser: Browser, cluster: Cluster, name: str, otp: OtpDevice, start: str = "/web"
) -> Page:
    """A new browser context, logged in from `start` (which sends it to the login page)."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"https://{cluster.proxy_addr}{start}")
    assert "/web/login" in page.url
    page.fill("#user", name)
    page.fill("#password", PASSWORD)
    page.fill("#otp", otp.next_code())
    # Wait for the answer's page to load: a call on the page while it is still being
    # replaced fails in Chromium ("Not attached to an active page").
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page
