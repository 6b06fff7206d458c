"""The audit log page: an auditor filters events; a user without the rule sees no link
and is refused by auth if they go to the page anyway."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.web.helpers import log_in, shot, sign_up


def test_auditor_filters_the_audit_log(cluster: Cluster, browser: Browser, tmp_path: Path) -> None:
    otp = sign_up(cluster, browser, tmp_path, "auditer", roles="access,auditor")
    page = log_in(browser, cluster, "auditer", otp)
    page.click("header nav a:text-is('Audit log')")
    assert page.url.endswith("/web/audit")
    page.fill("#event", "user.login")
    page.fill("#user", "auditer")
    page.click(".filters button")
    rows = page.locator("#events tbody tr").all_inner_texts()
    assert rows and all("user.login" in row and "auditer" in row for row in rows), rows
    shot(page, tmp_path, "audit")
    page.context.close()


def test_user_without_the_rule_is_refused(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "plainuser")
    page = log_in(browser, cluster, "plainuser", otp)
    assert "Audit log" not in page.locator("header nav").inner_text()
    response = page.goto(f"https://{cluster.proxy_addr}/web/audit")
    assert response is not None and response.status == 403
    assert page.locator("p.error").inner_text().startswith("access denied")
    # Nothing under the refusal that reads as an answer ("No events match.").
    assert page.locator("#events").count() == 0 and page.locator("form.filters").count() == 0
    # The locks page alike: no lock form, no "No locks." table.
    response = page.goto(f"https://{cluster.proxy_addr}/web/locks")
    assert response is not None and response.status == 403
    assert page.locator("p.error").inner_text().startswith("access denied")
    assert page.locator("#new-lock").count() == 0 and page.locator("#locks").count() == 0
    page.context.close()
