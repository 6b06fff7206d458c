"""Names as people type them: ids by unique prefix, a near miss gets a suggestion,
label filters read as typed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, User
from tests.support.unix import ensure_user
from tests.support.wait import eventually

ROLE = """\
kind: role
metadata: {name: typist}
spec:
  allow: {logins: [cgtp], node_labels: {env: dev}}
  options: {record_session: {ssh: strict}}
"""


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user("cgtp")
    c = Cluster(tmp_path_factory.mktemp("names"), roles="auth,proxy,node", labels="env=dev")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLE)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def typist(named: Cluster) -> User:
    user = named.add_user("typist", roles="typist")
    named.login(user)
    return user


def test_a_near_miss_node_name_gets_a_suggestion(named: Cluster, typist: User) -> None:
    typo = named.cgsh(typist, "ssh", "cgtp@nod-1", "true", check=False)
    assert typo.returncode == 4
    assert typo.stderr.strip() == 'error: node "nod-1" not found; did you mean "node-1"?'
    far = named.cgsh(typist, "ssh", "cgtp@database", "true", check=False)
    assert far.stderr.strip() == 'error: node "database" not found'


def test_label_filters_print_as_typed(named: Cluster, typist: User) -> None:
    none = named.cgsh(typist, "ssh", "cgtp@env=nosuch", "true", check=False)
    assert none.stderr.strip() == "error: no node you can reach has labels env=nosuch"


def test_ls_verbose_shows_node_ids(named: Cluster, typist: User) -> None:
    out = named.cgsh(typist, "ls", "-v").stdout
    assert out.splitlines()[0].split()[:3] == ["Node", "ID", "Hostname"]
    assert "node-1" in out


def test_a_recording_plays_by_a_unique_prefix(named: Cluster, typist: User) -> None:
    assert named.cgsh(typist, "ssh", "cgtp@node-1", "echo", "prefixed").returncode == 0

    def recorded() -> list[dict[str, object]] | None:
        out = named.cgsh(typist, "recordings", "ls", "--format=json").stdout
        found: list[dict[str, object]] = json.loads(out)
        return found or None

    full_id = str(eventually(recorded)[0]["id"])
    played = named.cgsh(typist, "play", full_id[:8], "--format=json")
    assert json.loads(played.stdout)["id"] == full_id
    missing = named.cgsh(typist, "play", "ffffffff", check=False)
    if not full_id.startswith("ffffffff"):
        assert missing.stderr.strip() == 'error: recording "ffffffff" not found'
