"""The step-up before a review, from the side of someone holding a reviewer's browser
session (but not their authenticator): approving takes a fresh one-time code of *that*
reviewer, checked by auth. No code, the code of this morning's login, or another user's
fresh code are refused; guessing locks the account as guessing at login does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.support.cluster import PASSWORD, Cluster
from tests.support.otp import STEP, OtpDevice
from tests.web.helpers import log_in, shot, sign_up

ROLES = """\
kind: role
metadata: {name: step-contractor}
spec:
  allow:
    request: {roles: [step-node-access]}
---
kind: role
metadata: {name: step-node-access}
spec:
  allow: {logins: [stepper], node_labels: {"*": "*"}}
---
kind: role
metadata: {name: step-approver}
spec:
  allow: {review_requests: {roles: [step-node-access]}}
"""


@pytest.fixture(scope="module", autouse=True)
def roles(cluster: Cluster) -> None:
    cluster.cgctl("create", "-f", "-", input=ROLES)


def _ask(browser: Browser, cluster: Cluster, name: str, otp: OtpDevice) -> str:
    """`name` requests step-node-access in the browser; the review page's path."""
    page = log_in(browser, cluster, name, otp)
    page.click("header nav a:text-is('Requests')")
    page.select_option("#roles", "step-node-access")
    page.fill("#reason", "deploy")
    page.click("#new-request button")
    assert "/web/requests/" in page.url
    path = page.url.split(cluster.proxy_addr, 1)[1]
    page.context.close()
    return path


def _review(page: Page, code: str) -> str:
    """Submit an approval with `code` as an attacker would: the page's own checks (a
    required six-digit field) removed. The error shown, or "" if approved."""
    page.evaluate(
        "() => { const f = document.querySelector('#otp');"
        " f.removeAttribute('required'); f.removeAttribute('pattern'); }"
    )
    page.fill("#reason", "looks fine")
    page.fill("#otp", code)
    page.click("#approve")
    error = page.locator("p.error")
    return error.inner_text() if error.count() else ""


def _mfa_events(cluster: Cluster, user: str) -> list[dict[str, object]]:
    out = cluster.cgctl(
        "audit", "ls", "--event=user.mfa.verify", f"--user={user}", "--format=json"
    ).stdout
    events: list[dict[str, object]] = json.loads(out)
    return events


def _wrong_code(otp: OtpDevice) -> str:
    """Six digits that are none of the codes auth would take now (a guess that misses)."""
    now = int(time.time()) // STEP
    taken = {otp.totp.at(step * STEP) for step in range(now - 2, now + 3)}
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in taken)


def test_the_step_up_takes_only_a_fresh_code_of_the_reviewer(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    cid = sign_up(cluster, browser, tmp_path, "step-cid", roles="step-contractor")
    ann = sign_up(cluster, browser, tmp_path, "step-ann", roles="step-approver")
    path = _ask(browser, cluster, "step-cid", cid)

    page = log_in(browser, cluster, "step-ann", ann, start=path)
    assert page.locator("#password").count() == 0  # a code only
    shot(page, tmp_path, "request-review")
    # No code at all.
    assert _review(page, "") == "enter the one-time code from your authenticator app"
    # The code of her login (in the page's history, say): already used.
    assert "already used" in _review(page, ann.used_code())
    # Another user's code of this very moment: not hers.
    assert _review(page, cid.totp.now()) == "access denied: invalid one-time code"
    assert page.locator("#state").inner_text() == "PENDING"
    # Her own fresh code: approved (so the refusals above were the codes' doing).
    assert _review(page, ann.next_code()) == ""
    assert page.locator("p.ok").inner_text() == "you approved this request"
    assert page.locator("#state").inner_text() == "APPROVED"
    shot(page, tmp_path, "request-approved")

    events = _mfa_events(cluster, "step-ann")
    assert sorted(str(e.get("error", "")) for e in events) == [
        "",
        "bad one-time code",
        "one-time code already used",
    ]
    assert [e["success"] for e in events if not e.get("error")] == [True]
    page.context.close()


def test_five_wrong_codes_lock_the_reviewer_out(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    eve = sign_up(cluster, browser, tmp_path, "step-eve", roles="step-contractor")
    bea = sign_up(cluster, browser, tmp_path, "step-bea", roles="step-approver")
    path = _ask(browser, cluster, "step-eve", eve)

    page = log_in(browser, cluster, "step-bea", bea, start=path)
    for _ in range(5):
        assert _review(page, _wrong_code(bea)) == "access denied: invalid one-time code"
    # Now even her right code is refused, and so is a login: the lockout is the login's.
    locked = _review(page, bea.next_code())
    assert "too many failed logins" in locked
    assert page.locator("#state").inner_text() == "PENDING"
    shot(page, tmp_path, "request-step-up-locked")
    again = browser.new_context(ignore_https_errors=True).new_page()
    again.goto(f"https://{cluster.proxy_addr}/web/login")
    again.fill("#user", "step-bea")
    again.fill("#password", PASSWORD)
    again.fill("#otp", bea.used_code())  # refused before any code is looked at
    again.click("button[type=submit]")
    assert "too many failed logins" in again.locator("p.error").inner_text()
    assert [e.get("error") for e in _mfa_events(cluster, "step-bea")].count(
        "account locked after repeated failures"
    ) == 1
    again.context.close()
    page.context.close()
