"""An admin locks a user from the locks page, sees the lock listed, and removes it; the
refusal of a bad target is shown in place."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.web.helpers import log_in, shot, sign_up


def test_admin_creates_lists_and_removes_a_lock(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "lockadmin", roles="access,editor")
    page = log_in(browser, cluster, "lockadmin", otp)
    page.click("header nav a:text-is('Locks')")
    page.select_option("#target", "user")
    page.fill("#value", "someone")
    page.fill("#message", "laptop stolen")
    page.fill("#ttl", "1h")
    page.click("#new-lock button")
    row = page.locator("#locks tr[data-lock]")
    assert row.count() == 1
    assert "user=someone" in row.inner_text() and "laptop stolen" in row.inner_text()
    assert "someone" in cluster.cgctl("get", "lock", "--format=json").stdout
    shot(page, tmp_path, "locks")

    page.fill("#value", "not a name!")
    page.click("#new-lock button")
    assert page.locator("p.error").inner_text().startswith("invalid lock")

    page.click("#locks tr[data-lock] button")
    assert page.locator("#locks tr[data-lock]").count() == 0
    assert "someone" not in cluster.cgctl("get", "lock", "--format=json").stdout
    page.context.close()
