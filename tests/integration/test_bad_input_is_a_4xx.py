"""What a fuzzing run sent the proxy and auth, each answered with a 4xx and a reason:
never a 500, never stored, and the servers answer normally afterwards."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import Cluster
from tests.support.raw_http import admin_context, send, send_json

DEEP = b"[" * 10_000 + b"]" * 10_000
LONG_NUMBER = b"9" * 5_000
FAR = "9999-12-31T23:59:59-23:59"  # year 10000 in UTC


def login(extra: bytes) -> bytes:
    return b'{"user": "fuzz-user", "password": "pw", "otp": "123456", "public_key": "k", ' + extra


def join(extra: bytes) -> bytes:
    return b'{"token": "00", "role": "node", "public_key": "k", "name": "fuzz-host", ' + extra


def user_context(home: Path) -> ssl.SSLContext:
    return IdentityFiles.load(home / "keys").tls_context(insecure=True)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def lock_doc(name: str, expires: str) -> dict[str, object]:
    return {
        "kind": "lock",
        "version": "v1",
        "metadata": {"name": name, "expires": expires},
        "spec": {"target": {"user": "nobody"}},
    }


def test_every_fuzzed_input_is_refused_with_a_reason(cluster: Cluster) -> None:
    proxy, auth = cluster.proxy_addr, cluster.auth_addr
    admin = admin_context(cluster.data_dir)
    user = cluster.add_user("fuzz-victim", logins="fuzz")
    cluster.login(user)
    mine = user_context(user.home)
    j = "application/json"
    odd_charset = f"{j}; charset=x-nope"
    multipart = "multipart/form-data; boundary=zz"
    form = "application/x-www-form-urlencoded"
    surrogate = b'{"user": "\\ud800", "password": "pw", "otp": "1", "public_key": "k"}'
    huge_role = {"kind": "role", "version": "v1", "metadata": {"name": "fuzz-r"},
                 "spec": {"options": {"max_session_ttl": 10**30}}}  # fmt: skip
    far_user = {"kind": "user", "version": "v1", "metadata": {"name": "fuzz-u2"},
                "status": {"locked_until": FAR}}  # fmt: skip
    two_mb = b'"x": "' + b"a" * 2_000_000 + b'"}'
    cases: list[tuple[str, str, str, str, bytes | None, str, ssl.SSLContext | None]] = [
        # (what, where, method, path, body, content type, client certificate)
        ("10,000 deep", proxy, "POST", "/v1/login", login(b'"ttl": ' + DEEP + b"}"), j, None),
        ("10,000 deep", auth, "POST", "/v1/join", join(b'"principals": ' + DEEP + b"}"), j, None),
        ("5,000 digits", auth, "POST", "/v1/join", join(b'"x": ' + LONG_NUMBER + b"}"), j, None),
        ("5,000 digits", proxy, "POST", "/v1/login", login(b'"x": ' + LONG_NUMBER + b"}"), j, None),
        ("charset", proxy, "POST", "/v1/login", login(b'"ttl": "1h"}'), odd_charset, None),
        ("charset", auth, "POST", "/v1/join", join(b'"ttl": "1h"}'), odd_charset, None),
        ("NaN", proxy, "POST", "/v1/login", login(b'"ttl": NaN}'), j, None),
        ("Infinity", auth, "POST", "/v1/join", join(b'"principals": [Infinity]}'), j, None),
        ("surrogate", proxy, "POST", "/v1/login", surrogate, j, None),
        ("surrogate", auth, "POST", "/v1/join", join(b'"principals": ["\\udfff"]}'), j, None),
        ("not UTF-8", auth, "POST", "/v1/join", join(b'"principals": ["\xff\xfe"]}'), j, None),
        ("multipart", proxy, "POST", "/web/invite/abcd", b"--zz\r\nbroken", multipart, None),
        ("form bytes", proxy, "POST", "/web/invite/abcd", b"password=a&otp=%ff", form, None),
        ("huge ttl", proxy, "POST", "/v1/login", login(b'"ttl": "99999999999999999d"}'), j, None),
        ("huge token ttl", auth, "POST", "/v1/tokens", b'{"roles": ["node"], "ttl": "9999999999d"}',
         j, admin),
        ("huge role ttl", auth, "POST", "/v1/resources", _json({"resource": huge_role}), j, admin),
        ("limit=abc", auth, "GET", "/v1/events?limit=abc", None, j, admin),
        ("since=year 10000", auth, "GET", f"/v1/events?since={FAR}", None, j, admin),
        ("control in path", proxy, "GET", "/v1/api/whoami%00%09X:%20y", None, j, mine),
        ("newline in path", proxy, "GET", "/v1/api/whoami%0d%0aX:%20y", None, j, mine),
        ("pydantic", auth, "POST", "/v1/users",
         b'{"name": "fuzz-u", "roles": [], "traits": {"logins": [1]}}', j, admin),
        ("year 10000 lock", auth, "POST", "/v1/resources",
         _json({"resource": lock_doc("fuzz-far", FAR)}), j, admin),
        ("year 10000 user", auth, "POST", "/v1/resources", _json({"resource": far_user}), j, admin),
        ("2 MB body", proxy, "POST", "/v1/login", login(two_mb), j, None),
        ("2 MB body", auth, "POST", "/v1/join", join(two_mb), j, None),
        ("2 MB forwarded", proxy, "POST", "/v1/api/resources", b"{" + two_mb, j, mine),
    ]  # fmt: skip
    wrong = []
    for what, addr, method, path, body, content_type, context in cases:
        status, answer = send(addr, method, path, body, content_type, context)
        if not 400 <= status < 500:
            wrong.append(f"{what} {method} {path}: {status} {str(answer)[:120]}")
        elif not answer:
            wrong.append(f"{what} {method} {path}: {status} without a reason: {str(answer)[:120]}")
    assert not wrong, "\n".join(wrong)

    # Nothing was stored, every kind still reads, and both servers answer.
    status, locks = send(auth, "GET", "/v1/resources/lock", context=admin)
    assert status == 200 and not [x for x in locks if x["metadata"]["name"] == "fuzz-far"]
    status, users = send(auth, "GET", "/v1/resources/user", context=admin)
    assert status == 200 and "fuzz-u2" not in [u["metadata"]["name"] for u in users]
    assert send(proxy, "GET", "/v1/ping")[0] == 200
    assert send(proxy, "GET", "/v1/api/whoami", context=mine)[0] == 200
    assert "internal error" not in cluster.log.read_text()


def test_a_far_expiry_is_refused_but_a_late_one_is_taken_in_utc(cluster: Cluster) -> None:
    admin = admin_context(cluster.data_dir)
    status, answer = send_json(
        cluster.auth_addr, "/v1/resources", {"resource": lock_doc("fuzz-late", FAR)}, admin
    )
    assert status == 400 and "metadata.expires" in answer["message"]
    late = "8999-12-31T23:59:59-05:00"
    status, saved = send_json(
        cluster.auth_addr, "/v1/resources", {"resource": lock_doc("fuzz-late", late)}, admin
    )
    assert status == 200, saved
    assert saved["metadata"]["expires"] == "9000-01-01T04:59:59Z"
    assert send(cluster.auth_addr, "GET", "/v1/resources/lock", context=admin)[0] == 200
    cluster.cgctl("rm", "lock/fuzz-late")
