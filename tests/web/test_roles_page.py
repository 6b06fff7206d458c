"""An admin edits a role's YAML in the browser: an invalid document comes back in place
with the reason and changes nothing; a valid one is saved."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.web.helpers import log_in, shot, sign_up

ROLE = """\
kind: role
metadata: {name: web-editable}
spec:
  allow: {logins: [one]}
"""


def test_admin_edits_a_role_and_sees_validation_errors(
    cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    cluster.cgctl("create", "-f", "-", input=ROLE)
    otp = sign_up(cluster, browser, tmp_path, "roleadmin", roles="access,editor")
    page = log_in(browser, cluster, "roleadmin", otp)
    page.click("header nav a:text-is('Roles')")
    page.click("#roles a:text-is('web-editable')")
    text = page.locator("#yaml").input_value()
    assert "logins:" in text and "- one" in text

    page.fill("#yaml", text.replace("- one", "- one\n    bogus_field: 1"))
    page.click("#role-form button")
    assert page.locator("#role-error").is_visible()
    assert "bogus_field" in page.locator("#yaml").input_value()  # kept, to fix in place
    shot(page, tmp_path, "role-invalid")
    assert "bogus" not in cluster.cgctl("get", "role/web-editable", "--format=yaml").stdout

    page.fill("#yaml", text.replace("- one", "- one\n    - two"))
    page.click("#role-form button")
    assert page.locator("p.ok").inner_text() == "saved"
    assert "two" in cluster.cgctl("get", "role/web-editable", "--format=yaml").stdout
    page.context.close()
