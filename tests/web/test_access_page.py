"""/web/access: the access matrix the browser shows is the one `cgctl access ls` gives,
with each login's reason one click away and last week's activity charts; a user whose
roles lack `list` on `access` neither sees the link nor gets the page."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.web.helpers import log_in, shot, sign_up

ALLOWED, DENIED = "wam", "wax"
ROLES = f"""\
kind: role
metadata: {{name: wa-dev}}
spec:
  allow: {{logins: [{ALLOWED}, {DENIED}], node_labels: {{"*": "*"}}}}
  deny: {{logins: [{DENIED}]}}
"""
USERS = ("wa-dana", "wa-lou", "wa-sam")
SVG = "{http://www.w3.org/2000/svg}"


def _cli_rows(cluster: Cluster) -> set[tuple[str, str, str, str]]:
    rows = json.loads(cluster.cgctl("access", "ls", "--format=json").stdout)
    return {(r["user"], r["node"], r["login"], r["how"]) for r in rows if r["user"] in USERS}


def test_access_page_shows_the_matrix_of_cgctl_access_ls_and_the_charts(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    cluster.cgctl("create", "-f", "-", input=ROLES)
    cluster.add_user("wa-dana", roles="wa-dev")  # standing ALLOWED, denied DENIED
    cluster.add_user("wa-lou", roles="wa-dev")  # locked
    cluster.add_user("wa-sam", roles="access", logins="wa-sam")  # a login of its own name, standing
    cluster.cgctl("lock", "--user=wa-lou", "--message=under review")
    expected = _cli_rows(cluster)
    hows = {how for *_, how in expected}
    assert {"standing", "denied", "locked"} <= hows, expected

    otp = sign_up(cluster, browser, tmp_path, "wa-viewer", roles="access,auditor")
    page = log_in(browser, cluster, "wa-viewer", otp)
    page.click("header nav a:text-is('Access')")
    assert page.url.endswith("/web/access")
    cells = page.locator("#access-matrix details[data-row]")
    shown = {tuple(cells.nth(i).get_attribute("data-row").split("|")) for i in range(cells.count())}
    assert {row for row in shown if row[0] in USERS} == expected

    # A cell opens on why: the role and its labels, or the deny rule.
    dana = page.locator(f"details[data-row^='wa-dana|'][data-row$='|{DENIED}|denied']")
    dana.locator("summary").click()
    assert "denied by" in dana.inner_text() and "wa-dev" in dana.inner_text()
    allowed = page.locator(f"details[data-row^='wa-dana|'][data-row$='|{ALLOWED}|standing']")
    allowed.locator("summary").click()
    assert "role wa-dev" in allowed.inner_text() and "*=*" in allowed.inner_text()
    shot(page, tmp_path, "access")

    # The filter goes to auth: one user, same rows as the CLI's filter.
    page.fill("#user", "wa-lou")
    page.click("form.filters button")
    users = page.locator("#access-matrix tbody tr[data-user]")
    assert [users.nth(i).get_attribute("data-user") for i in range(users.count())] == ["wa-lou"]

    # The charts: one <svg> per series, a bar per day, today's logins counted (ours).
    charts = page.locator("#charts svg")
    assert charts.count() == 4
    for i in range(charts.count()):
        svg = ElementTree.fromstring(charts.nth(i).evaluate("e => e.outerHTML"))
        assert len(svg.findall(f"{SVG}rect")) == 7
    logins = ElementTree.fromstring(
        page.locator("#charts svg[aria-label^='Logins']").evaluate("e => e.outerHTML")
    )
    assert float(logins.findall(f"{SVG}rect")[-1].get("height", "0")) > 0
    shot(page, tmp_path, "activity")
    page.context.close()


def test_a_user_without_the_access_rule_sees_no_link_and_is_refused(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "wa-plain", roles="access")
    page = log_in(browser, cluster, "wa-plain", otp)
    nav = page.locator("header nav")
    assert nav.locator("a:text-is('Resources')").count() == 1  # the nav is there
    assert nav.locator("a:text-is('Access')").count() == 0
    response = page.goto(f"https://{cluster.proxy_addr}/web/access")
    assert response is not None and response.status == 403
    assert page.locator("p.error").inner_text().startswith("access denied")
    assert page.locator("#access-matrix").count() == 0 and page.locator("svg").count() == 0
    page.context.close()


def test_the_matrix_comes_a_page_at_a_time_and_page_two_has_the_next_rows(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    for name in ("wp-a", "wp-b", "wp-c"):
        cluster.add_user(name, roles="access", logins=name)
    every = json.loads(cluster.cgctl("access", "ls", "--format=json").stdout)
    order = [(r["user"], r["node"], r["login"], r["how"]) for r in every]
    assert len(order) >= 5

    otp = sign_up(cluster, browser, tmp_path, "wp-viewer", roles="access,auditor")
    page = log_in(browser, cluster, "wp-viewer", otp, start="/web/access?limit=2")

    def shown() -> list[tuple[str, ...]]:
        cells = page.locator("#access-matrix details[data-row]")
        rows = [
            tuple(cells.nth(i).get_attribute("data-row").split("|")) for i in range(cells.count())
        ]
        return sorted(rows)

    # Rows are ordered by user, then node and login: pages follow `cgctl access ls`.
    assert shown() == sorted(order[0:2])
    assert page.locator("#page-number").inner_text() == "page 1"
    assert page.locator("#first-page").count() == 0
    page.click("#next-page")
    assert page.locator("#page-number").inner_text() == "page 2"
    assert shown() == sorted(order[2:4])
    shot(page, tmp_path, "access-page-2")
    page.click("#first-page")
    assert shown() == sorted(order[0:2])
    page.context.close()
