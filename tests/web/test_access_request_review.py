"""A contractor asks for a role in one browser; an approver reviews it in another. The
review needs a fresh one-time code of the approver: a replayed code (what a thief holding
only the browser session might have seen) is refused (test_step_up.py has the attacks)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser

from tests.support.cluster import PASSWORD, Cluster, User
from tests.web.helpers import log_in, shot, sign_up

ROLES = """\
kind: role
metadata: {name: web-contractor}
spec:
  allow:
    request: {roles: [web-node-access]}
---
kind: role
metadata: {name: web-node-access}
spec:
  allow: {logins: [webreq], node_labels: {"*": "*"}}
---
kind: role
metadata: {name: web-approver}
spec:
  allow: {review_requests: {roles: [web-node-access]}}
"""


def test_contractor_requests_and_approver_steps_up(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    cluster.cgctl("create", "-f", "-", input=ROLES)
    carl_otp = sign_up(cluster, browser, tmp_path, "carl", roles="web-contractor")
    ann_otp = sign_up(cluster, browser, tmp_path, "ann", roles="web-approver")

    carl = log_in(browser, cluster, "carl", carl_otp)
    carl.click("header nav a:text-is('Requests')")
    carl.select_option("#roles", "web-node-access")
    carl.fill("#reason", "fix the db")
    carl.click("#new-request button")
    assert "/web/requests/" in carl.url
    request_url = carl.url
    assert carl.locator("#state").inner_text() == "PENDING"
    assert carl.locator("#review").count() == 0  # nobody reviews their own request
    # The same form sent again: the same request, and the page says so.
    carl.click("header nav a:text-is('Requests')")
    carl.select_option("#roles", "web-node-access")
    carl.fill("#reason", "fix the db")
    carl.click("#new-request button")
    assert carl.url.split("?")[0] == request_url
    assert "this is your pending request for the same" in carl.locator("p.ok").inner_text()

    # The link a chat message carries: through the login page, then straight to it.
    path = request_url.split(cluster.proxy_addr, 1)[1]
    ann = log_in(browser, cluster, "ann", ann_otp, start=path)
    assert ann.url == request_url
    assert "carl asks for web-node-access" in ann.locator("h1").inner_text()
    assert "fix the db" in ann.locator("dl.facts").inner_text()
    shot(ann, tmp_path, "request-review")
    # The code of her login, seen again: refused, and the request stays pending.
    ann.fill("#reason", "ok")
    ann.fill("#otp", ann_otp.used_code())
    ann.click("#approve")
    assert ann.locator("p.error").inner_text().startswith("access denied")
    assert ann.locator("#state").inner_text() == "PENDING"
    # A fresh code: approved.
    ann.fill("#reason", "ok")
    ann.fill("#otp", ann_otp.next_code())
    ann.click("#approve")
    assert ann.locator("p.ok").inner_text() == "you approved this request"
    assert ann.locator("#state").inner_text() == "APPROVED"
    assert "ann: approve — ok" in ann.locator("#reviews").inner_text()
    shot(ann, tmp_path, "request-approved")

    carl.reload()
    assert carl.locator("#state").inner_text() == "APPROVED"

    # A reason holding a long link wraps: neither page grows wider than the window.
    link = "https://tickets.example.com/search?jql=" + "project%3DOPS%26id%3D4711" * 16
    carl.click("header nav a:text-is('Requests')")
    carl.select_option("#roles", "web-node-access")
    carl.fill("#reason", link)
    carl.click("#new-request button")
    assert link in carl.locator("dl.facts").inner_text()
    wider = "document.documentElement.scrollWidth > window.innerWidth"
    assert not carl.evaluate(wider)
    carl.click("header nav a:text-is('Requests')")
    assert link in carl.locator("table").inner_text()
    assert not carl.evaluate(wider)
    carl.context.close()
    ann.context.close()


RESOURCE_ROLES = """\
kind: role
metadata: {name: web-box-asker}
spec:
  allow:
    request: {search_as_roles: [web-box-search]}
---
kind: role
metadata: {name: web-box-search}
spec:
  allow: {logins: [webbox], node_labels: {"*": "*"}}
---
kind: role
metadata: {name: web-box-approver}
spec:
  allow: {review_requests: {roles: [web-box-search]}}
"""


def test_a_resource_request_shows_the_resource_it_asks_for(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    """A reviewer approves a node, not a role that reaches every node: the page says
    which node, as cgsh and the chat messages do."""
    cluster.cgctl("create", "-f", "-", input=RESOURCE_ROLES)
    rex_otp = sign_up(cluster, browser, tmp_path, "rex", roles="web-box-asker")
    amy_otp = sign_up(cluster, browser, tmp_path, "amy", roles="web-box-approver")
    rex = User("rex", PASSWORD, rex_otp, tmp_path / "rex")
    cluster.login(rex)
    request_id = cluster.cgsh(
        rex, "request", "create", "--resource=node/node-1", "--reason=one box", "--nowait"
    ).stdout.strip()

    amy = log_in(browser, cluster, "amy", amy_otp, start=f"/web/requests/{request_id}")
    assert amy.locator("h1").inner_text() == "rex asks for node/node-1"
    assert amy.locator("#resources").inner_text() == "node/node-1, reached as web-box-search"
    # No role limits it: what approval would give, not "until the certificate expires".
    assert amy.locator("#duration").inner_text() == "8h from approval"
    amy.click("header nav a:text-is('Requests')")
    row = amy.locator(f"tr[data-request='{request_id}']").inner_text()
    assert "node/node-1" in row and "web-box-search" not in row
    amy.context.close()
