"""A caller cannot make auth build an unbounded list answer.

The access map:

An auditor (whose role may list the access map) asks auth, through the proxy with their
own login, for the whole matrix of one user with 60 logins by 20 nodes (1,200 rows): with
no `limit`, auth used to build and send every row (100 users by 1,000 nodes took it tens
of seconds). Now the answer is one page of DEFAULT_PAGE rows with the key of the next,
and a `limit` above MAX_PAGE is refused in one line. Paging on gives every row, as
`cgctl access ls` does, so the page hides nothing.

Access requests: any user may create them, and a reviewer's list holds everyone's; the
list is capped, newest first (`limit`, at most MAX_LIST), and a huge `limit` is refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest

from certgate.auth.http_access import DEFAULT_PAGE, MAX_PAGE
from certgate.auth.http_requests import MAX_LIST
from certgate.client.cluster import ClusterAPI, connect_profile
from certgate.errors import BadParameter
from certgate.recording.store import MAX_LIST as MAX_RECORDINGS
from tests.support.cluster import BIN, Cluster, User, run

LOGINS = [f"l{i:02d}" for i in range(60)]
NODES = [f"wide-{i:02d}" for i in range(20)]
ROWS = len(LOGINS) * len(NODES)


@pytest.fixture(scope="module")
def c(cluster: Cluster) -> Cluster:
    documents = "".join(
        f"---\nkind: node\nmetadata: {{name: {name}, labels: {{env: wide}}}}\n"
        f"spec: {{sub_kind: openssh, addr: '10.9.0.{i + 1}:22'}}\n"
        for i, name in enumerate(NODES)
    )
    cluster.cgctl("create", "-f", "-", input=documents)
    cluster.cgctl("users", "add", "wide", "--roles=access", f"--logins={','.join(LOGINS)}")
    return cluster


@pytest.fixture(scope="module")
def auditor(c: Cluster) -> User:
    user = c.add_user("aud", roles="auditor")
    c.login(user)
    return user


@contextlib.contextmanager
def logged_in_as(user: User) -> Iterator[ClusterAPI]:
    """The API through the proxy with `user`'s own cgsh login."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CERTGATE_HOME", str(user.home))
        cluster = connect_profile()  # the profile is read now, the client keeps it
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def api(auditor: User) -> Iterator[ClusterAPI]:
    with logged_in_as(auditor) as cluster:
        yield cluster


def test_no_limit_is_one_page_with_the_key_of_the_next(api: ClusterAPI) -> None:
    assert ROWS > DEFAULT_PAGE  # else the page could not show it is one
    first = api.call("GET", "/access", params={"user": "wide"})
    assert len(first["rows"]) == DEFAULT_PAGE
    assert first["next_key"]
    rest = api.call("GET", "/access", params={"user": "wide", "start_key": first["next_key"]})
    assert len(rest["rows"]) == ROWS - DEFAULT_PAGE
    assert rest["next_key"] == ""
    seen = {(r["node"], r["login"]) for r in first["rows"] + rest["rows"]}
    assert seen == {(n, login) for n in NODES for login in LOGINS}


@pytest.mark.parametrize("limit", [str(MAX_PAGE + 1), "1000000000", "99999999999999999999"])
def test_a_huge_limit_is_refused_in_one_line(api: ClusterAPI, limit: str) -> None:
    with pytest.raises(BadParameter) as refused:
        api.call("GET", "/access", params={"user": "wide", "limit": limit})
    assert refused.value.message == f"limit must be a whole number from 1 to {MAX_PAGE}"
    # The largest page allowed is served, whole.
    page = api.call("GET", "/access", params={"user": "wide", "limit": str(MAX_PAGE)})
    assert len(page["rows"]) == ROWS and page["next_key"] == ""


def test_cgctl_access_ls_pages_through_every_row(c: Cluster, auditor: User) -> None:
    env = {"CERTGATE_HOME": str(auditor.home)}
    out = run([str(BIN / "cgctl"), "access", "ls", "--user=wide", "--format=json"], env=env)
    assert len(json.loads(out.stdout)) == ROWS


REQUESTER_ROLE = """\
kind: role
metadata: {name: lb-requester}
spec:
  allow:
    request: {roles: [auditor]}
"""


def test_the_request_list_is_capped_newest_first(c: Cluster) -> None:
    c.cgctl("create", "-f", "-", input=REQUESTER_ROLE)
    asker = c.add_user("asker", roles="lb-requester")
    c.login(asker)
    with logged_in_as(asker) as api:
        made = [
            api.call("POST", "/access_requests", {"roles": ["auditor"], "reason": f"r{i}"})
            for i in range(3)
        ]
        every = api.call("GET", "/access_requests")
        assert len(every) == 3  # the control: without a small limit, all three
        newest = api.call("GET", "/access_requests", params={"limit": "2"})
        assert [r["metadata"]["name"] for r in newest] == [
            m["metadata"]["name"] for m in reversed(made[1:])
        ]
        for huge in (str(MAX_LIST + 1), "99999999999999999999"):
            with pytest.raises(BadParameter) as refused:
                api.call("GET", "/access_requests", params={"limit": huge})
            assert refused.value.message == f"limit must be a whole number from 1 to {MAX_LIST}"
        # The recordings list words it the same way.
        for bad in (str(MAX_RECORDINGS + 1), "abc"):
            with pytest.raises(BadParameter) as refused:
                api.call("GET", "/recordings", params={"limit": bad})
            assert refused.value.message == (
                f"limit must be a whole number from 1 to {MAX_RECORDINGS}"
            )
    shown = c.cgsh(asker, "request", "ls", "--limit=2", "--format=json")
    assert len(json.loads(shown.stdout)) == 2
    assert "showing the newest 2 requests: --limit=N shows more" in shown.stderr
