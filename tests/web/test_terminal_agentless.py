"""The web terminal on an agentless (stock OpenSSH) node: the resources page's Connect
menu opens it through the proxy's agentless forwarder, the path `cgsh ssh` takes, so the
proxy decides, audits (server=proxy) and records it (a direct dial of the sshd with the
web session's certificate would work too, unseen: that is what this test tells apart)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.support.sshd import Sshd, agentless_sshd
from tests.support.unix import ensure_user
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up

LOGIN = "webagent"
NODE = "agentless-web"
ROLE = f"""\
kind: role
metadata: {{name: web-agentless}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{env: agentless}}
"""


@pytest.fixture(scope="module")
def sshd(cluster: Cluster) -> Iterator[Sshd]:
    ensure_user(LOGIN)
    cluster.cgctl("create", "-f", "-", input=ROLE)
    with agentless_sshd(cluster, NODE, "{env: agentless}") as server:
        yield server


def _events(cluster: Cluster, event: str) -> list[dict[str, Any]]:
    out = cluster.cgctl("audit", "ls", f"--event={event}", f"--node={NODE}", "--format=json")
    found: list[dict[str, Any]] = json.loads(out.stdout)
    return found


def test_whoami_on_an_agentless_node_in_the_web_terminal(
    cluster: Cluster, browser: Browser, sshd: Sshd, tmp_path: Path
) -> None:
    otp = sign_up(cluster, browser, tmp_path, "wagent", roles="web-agentless")
    page = log_in(browser, cluster, "wagent", otp)
    row = page.locator(f"#nodes tr[data-node='{NODE}']")
    row.locator("details.connect summary").click()
    shot(page, tmp_path, "resources-agentless")
    row.locator(f"details.connect a:text-is('{LOGIN}')").click()
    eventually(lambda: page.locator("#term-status").inner_text() == "connected")
    page.locator("#terminal").click()
    page.keyboard.type("whoami\n")
    eventually(lambda: f"\n{LOGIN}" in page.locator(".xterm-rows").inner_text())
    shot(page, tmp_path, "terminal-agentless")
    page.keyboard.type("exit\n")
    eventually(lambda: "exit status 0" in page.locator("#term-status").inner_text())

    # The proxy decided and audited it, as for `cgsh ssh` to this node.
    started = eventually(lambda: _events(cluster, "session.start"), timeout=20)
    assert [(e["server"], e["user"], e["login"]) for e in started] == [("proxy", "wagent", LOGIN)]

    # And recorded it: the recording plays the session.
    def listed() -> bool:
        page.goto(f"https://{cluster.proxy_addr}/web/recordings")
        return page.locator("tr[data-recording]").count() == 1

    eventually(listed, timeout=30)
    assert NODE in page.locator("tr[data-recording]").inner_text()
    page.context.close()
