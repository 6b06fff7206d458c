"""Kubernetes clusters in the browser: the resources page lists a cluster to a user whose
role's kubernetes_labels match it (with the `cgsh kube login` hint) and not to one whose
role does not; the access page shows the same cluster rows as `cgctl access ls` —
which tests/integration/test_access_map_agrees_with_ssh.py checks against kubectl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.support.cluster import Cluster
from tests.support.kube_cluster import KubeSetup
from tests.support.kube_standin import KubeStandin
from tests.support.wait import eventually
from tests.web.helpers import log_in, shot, sign_up

CLUSTER = "rk-cluster"
ROLES = """\
kind: role
metadata: {name: rk-dev}
spec:
  allow: {kubernetes_labels: {env: dev}, kubernetes_groups: [rk-viewers, rk-editors]}
---
kind: role
metadata: {name: rk-prod}
spec:
  allow: {kubernetes_labels: {env: prod}, kubernetes_groups: [rk-viewers]}
---
kind: role
metadata: {name: rk-deny}
spec:
  allow: {kubernetes_labels: {"*": "*"}, kubernetes_groups: [rk-viewers]}
  deny: {kubernetes_labels: {team: web}}
"""
USERS = {"rk-ann": "rk-dev", "rk-ned": "rk-deny", "rk-lev": "rk-dev"}


@pytest.fixture(scope="module")
def kube(cluster: Cluster) -> Iterator[KubeSetup]:
    standin = KubeStandin(cluster.workdir)
    standin.start()
    setup = KubeSetup(cluster, standin, cluster.kube_proxy_port)
    try:
        setup.start_kube_service("rk-kube", labels="env=dev,team=web", cluster_name=CLUSTER)
        cluster.cgctl("create", "-f", "-", input=ROLES)
        yield setup
    finally:
        standin.stop()


def test_resources_list_a_cluster_only_to_a_user_whose_role_matches_its_labels(
    kube: KubeSetup, browser: Browser, tmp_path: Path
) -> None:
    cluster = kube.cluster
    otp = sign_up(cluster, browser, tmp_path, "rk-dana", roles="rk-dev")
    page = log_in(browser, cluster, "rk-dana", otp)
    page.click("#tab-kube")
    listed = page.locator(f"tr[data-kube-cluster='{CLUSTER}']")
    # The kube service's first heartbeat may still be on its way.
    eventually(lambda: (page.reload(), listed.count())[1])
    row = page.locator(f"tr[data-kube-cluster='{CLUSTER}']")
    assert "env=dev" in row.inner_text() and "team=web" in row.inner_text()
    assert row.locator("code.hint").inner_text() == f"cgsh kube login {CLUSTER}"
    assert "rk-editors, rk-viewers" in row.inner_text()
    assert page.locator("#cluster-count").inner_text() == "1 cluster"
    # The label filter and the search apply to clusters too.
    page.select_option("#label", "team=web")
    with page.expect_navigation():
        page.click("form.filters button")
    assert "tab=kube" in page.url and "label=team%3Dweb" in page.url
    assert page.locator(f"tr[data-kube-cluster='{CLUSTER}']").count() == 1
    page.fill("#q", "no-such-thing")
    with page.expect_navigation():
        page.click("form.filters button")
    assert page.locator("#cluster-count").inner_text() == "0 clusters"
    page.goto(f"https://{cluster.proxy_addr}/web/nodes?tab=kube")
    shot(page, tmp_path, "resources-kube")
    page.context.close()

    otp = sign_up(cluster, browser, tmp_path, "rk-pete", roles="rk-prod")
    page = log_in(browser, cluster, "rk-pete", otp, start="/web/nodes?tab=kube")
    assert page.locator("#kube-clusters").count() == 1  # the tab is there, empty
    assert page.locator("#cluster-count").inner_text() == "0 clusters"
    assert page.locator("tr[data-kube-cluster]").count() == 0
    page.context.close()


def test_the_access_page_shows_the_cluster_rows_of_cgctl_access_ls(
    kube: KubeSetup, browser: Browser, tmp_path: Path
) -> None:
    cluster = kube.cluster
    for name, role in USERS.items():
        cluster.add_user(name, roles=role)
    cluster.cgctl("lock", "--user=rk-lev", "--message=under review")

    def cli_rows() -> set[tuple[str, ...]]:
        out = cluster.cgctl("access", "ls", "--kind=kube_cluster", "--format=json").stdout
        return {
            (r["user"], r["kube_cluster"], ",".join(r["kubernetes_groups"]), r["how"])
            for r in json.loads(out)
            if r["user"] in USERS
        }

    expected = eventually(lambda: (rows := cli_rows()) and len(rows) == 3 and rows)
    assert {how for *_, how in expected} == {"standing", "denied", "locked"}

    otp = sign_up(cluster, browser, tmp_path, "rk-viewer", roles="access,auditor")
    page = log_in(browser, cluster, "rk-viewer", otp, start=f"/web/access?kube_cluster={CLUSTER}")
    assert page.locator(f"th[data-column='kube_cluster|{CLUSTER}']").count() == 1
    cells = page.locator("#access-matrix details[data-kind='kube_cluster']")
    shown = {tuple(cells.nth(i).get_attribute("data-row").split("|")) for i in range(cells.count())}
    assert {row for row in shown if row[0] in USERS} == expected
    ned = page.locator("details[data-row^='rk-ned|']")
    ned.locator("summary").click()
    assert "denied by" in ned.inner_text() and "rk-deny" in ned.inner_text()
    assert "denied by role rk-deny" in ned.inner_text()
    ann = page.locator("details[data-row^='rk-ann|']")
    ann.locator("summary").click()
    assert "role rk-dev" in ann.inner_text() and "env=dev" in ann.inner_text()
    shot(page, tmp_path, "access-kube")
    page.context.close()
