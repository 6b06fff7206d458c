"""Hypothesis against the HTTP API: whatever the body, query or path, the answer is never
a 5xx, and the servers answer normally afterwards. Bounded to a few seconds per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import Cluster
from tests.support.raw_http import admin_context, insecure

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["9999-12-31T23:59:59-23:59", "99999999999d", "alice\n", "\ud800", ""])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
LOGIN_FIELDS = ["user", "password", "otp", "public_key", "ttl", "token", "role", "name"]
KINDS = ["role", "user", "token", "lock", "node", "cert_authority", "nope"]


def _body(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def clients(cluster: Cluster) -> Iterator[dict[str, httpx.Client]]:
    user = cluster.add_user("fuzz-forwarded", logins="fuzz")
    cluster.login(user)
    mine = IdentityFiles.load(user.home / "keys").tls_context(insecure=True)
    made = {
        "user": httpx.Client(base_url=f"https://{cluster.proxy_addr}", verify=mine),
        "proxy": httpx.Client(base_url=f"https://{cluster.proxy_addr}", verify=insecure()),
        "auth": httpx.Client(base_url=f"https://{cluster.auth_addr}", verify=insecure()),
        "admin": httpx.Client(
            base_url=f"https://{cluster.auth_addr}", verify=admin_context(cluster.data_dir)
        ),
    }
    yield made
    for client in made.values():
        client.close()
    # Still answering, and nothing went wrong inside.
    assert httpx.get(f"https://{cluster.proxy_addr}/v1/ping", verify=insecure()).status_code == 200
    assert "internal error" not in cluster.log.read_text()


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.text[:300])


@FUZZ
@given(
    route=st.sampled_from(
        [("proxy", "/v1/login"), ("proxy", "/v1/invites/abcdef"), ("auth", "/v1/join")]
    ),
    fields=st.dictionaries(
        st.sampled_from(LOGIN_FIELDS),
        values,
    ),
    raw=st.none() | st.binary(max_size=200),
    charset=st.sampled_from(["", "; charset=utf-8", "; charset=latin-1", "; charset=x-bogus"]),
)
def test_unauthenticated_routes_never_fail_inside(
    clients: dict[str, httpx.Client],
    route: tuple[str, str],
    fields: dict[str, Any],
    raw: bytes | None,
    charset: str,
) -> None:
    where, path = route
    body = raw if raw is not None else _body(fields)
    headers = {"Content-Type": f"application/json{charset}"}
    _check(clients[where].post(path, content=body, headers=headers))


@FUZZ
@given(
    form=st.binary(max_size=200),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "multipart/form-data; boundary=zz", "text/plain"]
    ),
    token=st.text(alphabet="0123456789abcdefXYZ/.%", min_size=1, max_size=40),
)
def test_the_invite_form_never_fails_inside(
    clients: dict[str, httpx.Client], form: bytes, content_type: str, token: str
) -> None:
    response = clients["proxy"].post(
        f"/web/invite/{token}", content=form, headers={"Content-Type": content_type}
    )
    _check(response)


@FUZZ
@given(
    kind=st.sampled_from(KINDS),
    name=st.text(max_size=20) | st.sampled_from(["fz-ok", "alice\n"]),
    metadata=st.dictionaries(st.sampled_from(["expires", "labels", "description"]), values),
    spec=values,
    several=st.booleans(),
)
def test_admin_resource_writes_never_fail_inside(
    clients: dict[str, httpx.Client],
    kind: str,
    name: str,
    metadata: dict[str, Any],
    spec: Any,
    several: bool,
) -> None:
    document = {"kind": kind, "version": "v1", "metadata": {"name": name, **metadata}, "spec": spec}
    body = {"resources": [document, document]} if several else {"resource": document}
    _check(clients["admin"].post("/v1/resources", content=_body(body)))


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["limit", "since", "until", "event", "user", "cursor"]),
        st.text(max_size=30) | st.sampled_from(["9999-12-31T23:59:59-23:59", "abc", "-1"]),
    ),
    kind=st.sampled_from(KINDS),
    name=st.text(min_size=1, max_size=20).filter(lambda n: "/" not in n),
    add=st.dictionaries(st.sampled_from(["name", "roles", "traits", "ttl"]), values),
)
def test_admin_reads_and_adds_never_fail_inside(
    clients: dict[str, httpx.Client],
    params: dict[str, str],
    kind: str,
    name: str,
    add: dict[str, Any],
) -> None:
    admin = clients["admin"]
    _check(admin.get("/v1/events", params=params))
    _check(admin.get(f"/v1/resources/{kind}/{quote(name, safe='')}"))
    _check(admin.post("/v1/users", content=_body(add)))
    _check(admin.post("/v1/tokens", content=_body(add)))


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["limit", "since", "until", "user", "node", "incomplete", "kinds"]),
        st.text(max_size=30)
        | st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00+23:59"]),
    ),
    ident=st.text(min_size=1, max_size=40),
    body=values,
    path=st.sampled_from(
        ["/v1/sessions", "/v1/agentless/host-certs", "/v1/events", "/v1/nodes/heartbeat"]
    ),
)
def test_admin_sessions_recordings_and_services_never_fail_inside(
    clients: dict[str, httpx.Client], params: dict[str, str], ident: str, body: Any, path: str
) -> None:
    admin = clients["admin"]
    quoted = quote(ident, safe="")
    _check(admin.get("/v1/recordings", params=params))
    _check(admin.get(f"/v1/recordings/{quoted}"))
    _check(admin.get("/v1/sessions", params=params))
    _check(admin.get(f"/v1/sessions/{quoted}"))
    _check(admin.post(path, content=_body(body)))
    _check(admin.put(f"/v1/recordings/{quoted}", content=_body(body)))


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.text(max_size=40),
    body=st.none() | values,
    params=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
)
def test_what_the_proxy_forwards_never_fails_inside(
    clients: dict[str, httpx.Client],
    method: str,
    path: str,
    body: Any,
    params: dict[str, str],
) -> None:
    content = None if body is None else _body(body)
    url = "/v1/api/" + quote(path, safe="/")
    _check(clients["user"].request(method, url, content=content, params=params))
