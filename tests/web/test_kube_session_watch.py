"""Watching someone's `kubectl exec -it` from the web UI's live sessions page, as
`cgsh join` does (issue 14, "active sessions, join as observer by policy", with issue 11's
kube sessions): the session has no node, so the proxy's own SSH listener serves the view
(proxy/kube_join.py) and the web terminal dials it.

Real Chromium, real certgate (auth + proxy + a kube service), real kubectl in a real
terminal against the API-server stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pexpect  # type: ignore[import-untyped]
import pytest
from playwright.sync_api import Browser, Page

from tests.support.cluster import Cluster, User
from tests.support.kube_cluster import KUBECTL, KubeSetup
from tests.support.kube_standin import Grant, KubeStandin
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up

ROLES = """\
kind: role
metadata: {name: kw-exec}
spec:
  allow: {kubernetes_labels: {"*": "*"}, kubernetes_groups: [kw-execers]}
---
kind: role
metadata: {name: kw-watch}
spec:
  allow:
    join_sessions: [{roles: [kw-exec], kinds: [k8s], modes: [observer]}]
---
kind: role
metadata: {name: kw-sshwatch}
spec:
  allow:
    join_sessions: [{roles: [kw-exec], kinds: [ssh], modes: [observer]}]
    rules: [{resources: [session], verbs: [list, read]}]
"""


@pytest.fixture(scope="module")
def kube(cluster: Cluster) -> Iterator[KubeSetup]:
    standin = KubeStandin(cluster.workdir)
    standin.grants.append(Grant(("group:kw-execers",)))
    standin.start()
    setup = KubeSetup(cluster, standin, cluster.kube_proxy_port)
    try:
        setup.start_kube_service("kw-kube", cluster_name="kw-cluster")
        cluster.cgctl("create", "-f", "-", input=ROLES)
        yield setup
    finally:
        standin.stop()


@pytest.fixture(scope="module")
def contractor(kube: KubeSetup) -> User:
    user = kube.cluster.add_user("kw-contractor", roles="kw-exec")
    kube.cluster.login(user)
    eventually(lambda: "kw-cluster" in kube.cluster.cgsh(user, "kube", "ls").stdout)
    result = kube.kube_login(user, "kw-cluster")
    assert result.returncode == 0, result.stderr
    return user


def _exec_shell(kube: KubeSetup, user: User) -> pexpect.spawn:
    child = pexpect.spawn(
        str(KUBECTL),
        ["-n", "default", "exec", "-it", "shell", "--", "/bin/sh"],
        env={**kube.env(user), "TERM": "xterm"},
        dimensions=(30, 100),
        timeout=20,
        encoding="utf-8",
    )
    child.expect(r"\$ ")
    return child


def _rows(page: Page, cluster: Cluster) -> list[str]:
    page.goto(f"https://{cluster.proxy_addr}/web/sessions")
    rows = page.locator("#sessions tr[data-session]")
    return [rows.nth(i).inner_text() for i in range(rows.count())]


def test_an_admin_watches_a_kubectl_exec_in_the_browser(
    kube: KubeSetup, contractor: User, browser: Browser, tmp_path: Path
) -> None:
    cluster = kube.cluster
    shell = _exec_shell(kube, contractor)
    otp = sign_up(cluster, browser, tmp_path, "kw-admin", roles="kw-watch")
    page = log_in(browser, cluster, "kw-admin", otp)
    eventually(lambda: len(_rows(page, cluster)) == 1, timeout=20)
    row = page.locator("#sessions tr[data-session]")
    assert "kw-contractor" in row.inner_text()
    assert row.locator("a.watch").count() == 1
    assert row.locator("a.join").count() == 0  # peer is never offered for kube sessions
    shot(page, tmp_path, "sessions-kube")

    row.locator("a.watch").click()
    eventually(lambda: page.locator("#term-status").inner_text() == "connected")
    shell.sendline("echo kube-seen-$((6*7))")
    eventually(lambda: "kube-seen-42" in page.locator(".xterm-rows").inner_text())
    shell.expect_exact("kw-admin joined (observer)")
    shot(page, tmp_path, "session-watch-kube")
    page.locator("#terminal").click()
    page.keyboard.type("echo typed-by-$((6*8))\n")  # an observer's keys go nowhere
    shell.sendline("echo done-$((6*9))")
    eventually(lambda: "done-54" in page.locator(".xterm-rows").inner_text())
    assert "typed-by-48" not in shell.before + (shell.buffer or "")

    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    eventually(lambda: "ended" in page.locator("#term-status").inner_text())
    page.context.close()


def test_a_user_whose_roles_watch_only_ssh_sessions_cannot_watch_a_kube_one(
    kube: KubeSetup, contractor: User, browser: Browser, tmp_path: Path
) -> None:
    cluster = kube.cluster
    shell = _exec_shell(kube, contractor)
    try:
        otp = sign_up(cluster, browser, tmp_path, "kw-sshonly", roles="kw-sshwatch")
        page = log_in(browser, cluster, "kw-sshonly", otp)
        # Listed (a session `list` rule) but no Watch: its roles join ssh sessions only.
        eventually(lambda: len(_rows(page, cluster)) == 1, timeout=20)
        row = page.locator("#sessions tr[data-session]")
        assert row.locator("a.watch").count() == 0
        session_id = row.get_attribute("data-session")
        assert session_id
        # The URL typed by hand is refused by the proxy, which checks again.
        page.goto(
            f"https://{cluster.proxy_addr}/web/terminal"
            f"?node=kw-cluster&login=join:observer:{session_id}"
        )
        eventually(lambda: "may not join" in page.locator("#term-status").inner_text())
        page.context.close()
    finally:
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
