"""A browser session ends after `proxy_service.web_idle_timeout` unused; typing in its
web terminal is use, so a shell worked in for longer than that stays open."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.support.unix import ensure_user
from tests.support.wait import eventually
from tests.web.helpers import log_in, sign_up

IDLE = 4.0  # seconds


@pytest.fixture(scope="module")
def idle_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("idle")
    config = workdir / "certgate.yaml"
    config.write_text(f"version: v1\nproxy_service:\n  web_idle_timeout: {IDLE:.0f}s\n")
    c = Cluster(workdir, roles="auth,proxy,node", extra_args=["--config", str(config)])
    c.start()
    yield c
    c.stop()


def test_typing_keeps_the_session_and_idleness_ends_it(
    idle_cluster: Cluster, browser: Browser, tmp_path: Path
) -> None:
    ensure_user("webidle")
    otp = sign_up(idle_cluster, browser, tmp_path, "webidle")
    page = log_in(browser, idle_cluster, "webidle", otp)
    page.click("details.connect summary")
    page.click("details.connect a:text-is('webidle')")
    eventually(lambda: page.locator("#term-status").inner_text() == "connected")
    page.locator("#terminal").click()

    # Twice the timeout with no page loaded, typing all along: still connected.
    for i in range(int(2 * IDLE)):
        page.keyboard.type(f"echo tick-{i}\n")
        time.sleep(1)
    assert page.locator("#term-status").inner_text() == "connected"
    other = page.context.new_page()
    other.goto(f"https://{idle_cluster.proxy_addr}/web/nodes")
    assert "/web/login" not in other.url  # the session is alive

    # Then nothing for longer than the timeout: the next request finds it ended, and
    # its terminal closes saying why.
    time.sleep(IDLE + 1.5)
    other.goto(f"https://{idle_cluster.proxy_addr}/web/nodes")
    assert "/web/login" in other.url
    eventually(lambda: "idle" in page.locator("#term-status").inner_text())
    page.context.close()
