"""An admin invites a user from the users page (the link works), resets and removes one;
removing a user ends their web session at once."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up


def test_admin_invites_resets_and_removes_a_user(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "useradmin", roles="access,editor")
    page = log_in(browser, cluster, "useradmin", otp)
    page.click("header nav a:text-is('Users')")
    page.fill("#name", "newbie")
    page.fill("#roles", "access")
    page.fill("#logins", "newbie, ubuntu")
    page.click("#new-user button")
    link = page.locator("#invite-link").inner_text()
    assert f"https://{cluster.proxy_addr}/web/invite/" in link
    row = page.locator("tr[data-user='newbie']")
    assert "access" in row.inner_text() and "newbie, ubuntu" in row.inner_text()
    shot(page, tmp_path, "users")
    # The link opens the sign-up page for that user.
    other = page.context.new_page()
    other.goto(link)
    assert "Welcome to test.certgate, newbie" in other.locator("h1").inner_text()
    other.close()

    row.locator("button.reset").click()
    assert page.locator("#invite-link").inner_text() != link
    page.locator("tr[data-user='newbie'] button.remove").click()
    assert page.locator("tr[data-user='newbie']").count() == 0
    assert "newbie" not in cluster.cgctl("users", "ls").stdout
    page.context.close()


def test_removing_a_user_ends_their_web_session(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "leaver")
    page = log_in(browser, cluster, "leaver", otp)
    page.reload()
    assert page.url.endswith("/web/nodes")  # logged in, and stays so on reload
    cluster.cgctl("users", "rm", "leaver")

    def logged_out() -> bool:
        page.goto(f"https://{cluster.proxy_addr}/web/nodes")
        return "/web/login" in page.url

    eventually(logged_out, timeout=10)
    page.context.close()


def test_a_user_without_rights_sees_a_refusal_and_an_empty_state_not_dead_forms(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    cluster.cgctl(
        "create", "-f", "-", input="kind: role\nmetadata: {name: reaches-nothing}\nspec: {}\n"
    )
    otp = sign_up(cluster, browser, tmp_path, "bystander", roles="reaches-nothing")
    page = log_in(browser, cluster, "bystander", otp)
    # No node: says so, and where to ask, instead of an empty table.
    assert "No node your roles reach yet" in page.locator("#nodes").inner_text()
    assert page.locator("#nodes a[href='/web/requests']").count() == 1
    page.goto(f"https://{cluster.proxy_addr}/web/users")
    assert 'do not allow "list" on "user"' in page.locator("p.error").inner_text()
    assert page.locator("#new-user").count() == 0 and page.locator("#users").count() == 0
    page.context.close()
