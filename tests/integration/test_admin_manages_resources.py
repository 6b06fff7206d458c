"""An admin manages roles, users and tokens with cgctl; bad documents change nothing."""

from __future__ import annotations

import json

import yaml

from tests.support.cluster import Cluster, invite_token

DEV_ROLE = """\
kind: role
version: v1
metadata: {name: dev, description: developers}
spec:
  allow:
    logins: ["{{internal.logins}}", ubuntu]
    node_labels: {env: [dev, staging]}
  deny:
    logins: [root]
  options: {max_session_ttl: 2h}
"""


def test_role_round_trip_through_yaml_and_json(cluster: Cluster) -> None:
    out = cluster.cgctl("create", "-f", "-", input=DEV_ROLE).stdout
    assert 'role "dev" has been created' in out
    shown = yaml.safe_load(cluster.cgctl("get", "role/dev", "--format=yaml").stdout)
    assert shown["spec"]["allow"]["logins"] == ["{{internal.logins}}", "ubuntu"]
    assert shown["spec"]["deny"]["logins"] == ["root"]
    assert shown["spec"]["options"]["max_session_ttl"] == "2h"
    as_json = json.loads(cluster.cgctl("get", "role/dev", "--format=json").stdout)
    assert as_json["metadata"]["name"] == "dev"
    text = cluster.cgctl("get", "roles").stdout
    assert "dev" in text and "access" in text and "editor" in text and "auditor" in text

    again = cluster.cgctl("create", "-f", "-", input=DEV_ROLE, check=False)
    assert again.returncode == 5
    assert again.stderr.strip() == 'error: role "dev" already exists'
    forced = cluster.cgctl("create", "--force", "-f", "-", input=DEV_ROLE.replace("2h", "1h"))
    assert forced.returncode == 0
    shown = yaml.safe_load(cluster.cgctl("get", "role/dev", "--format=yaml").stdout)
    assert shown["spec"]["options"]["max_session_ttl"] == "1h"

    # Not from under the users who hold it: they would name a role that is not there.
    cluster.cgctl("users", "add", "dev-dora", "--roles=dev")
    held = cluster.cgctl("rm", "role/dev", check=False)
    assert held.returncode == 2, held.stderr
    assert held.stderr.strip() == (
        'error: role "dev" is held by dev-dora: take it from them first '
        "(cgctl users update NAME --set-roles=...)"
    )
    assert cluster.cgctl("get", "role/dev").returncode == 0
    cluster.cgctl("users", "update", "dev-dora", "--set-roles=access")
    assert cluster.cgctl("rm", "role/dev").returncode == 0
    gone = cluster.cgctl("get", "role/dev", check=False)
    assert gone.returncode == 4
    assert gone.stderr.strip() == 'error: role "dev" not found'


def test_a_bad_field_is_named_and_nothing_is_written(cluster: Cluster) -> None:
    bad = DEV_ROLE.replace("ubuntu]", "ubuntu, [x]]").replace("name: dev", "name: dev-bad")
    result = cluster.cgctl("create", "-f", "-", input=bad, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: role "dev-bad": spec.allow.logins[2]: must be a string'
    assert cluster.cgctl("get", "role/dev-bad", check=False).returncode == 4


def test_one_bad_document_in_a_stream_refuses_all_of_them(cluster: Cluster) -> None:
    good = DEV_ROLE.replace("name: dev", "name: stream-good")
    bad = DEV_ROLE.replace("name: dev", "name: stream-bad").replace("2h", "forever")
    result = cluster.cgctl("create", "-f", "-", input=good + "---\n" + bad, check=False)
    assert result.returncode == 2
    assert "spec.options.max_session_ttl" in result.stderr
    assert cluster.cgctl("get", "role/stream-good", check=False).returncode == 4


def test_malformed_yaml_and_unknown_kinds_are_one_line_refusals(cluster: Cluster) -> None:
    for text, expected in (
        ("kind: role\nmetadata: {name: [", "error: invalid YAML at line"),
        ("kind: spaceship\nmetadata: {name: x}\n", "error: unknown kind 'spaceship'"),
        ("- just\n- a list\n", "error: each document must be a mapping"),
        ("kind: role\nmetadata: {name: ../../etc}\n", 'error: role "../../etc": metadata.name'),
        ("kind: lock\nmetadata: {name: l}\nspec: {target: {}}\n", 'error: lock "l": spec.target'),
    ):
        result = cluster.cgctl("create", "-f", "-", input=text, check=False)
        assert result.returncode == 2, result
        assert result.stderr.startswith(expected), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_role_with_a_broken_template_is_refused(cluster: Cluster) -> None:
    broken = DEV_ROLE.replace("{{internal.logins}}", "{{internal.logins").replace(
        "name: dev", "name: dev-template"
    )
    result = cluster.cgctl("create", "-f", "-", input=broken, check=False)
    assert result.returncode == 2
    assert "template" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_users_add_ls_reset_rm(cluster: Cluster) -> None:
    unknown_role = cluster.cgctl("users", "add", "frank", "--roles=nope", check=False)
    assert unknown_role.returncode == 4
    assert unknown_role.stderr.strip() == 'error: role "nope" not found'

    grace = cluster.add_user("grace", roles="access", logins="grace,deploy")
    rows = cluster.cgctl("users", "ls").stdout
    line = next(r for r in rows.splitlines() if r.startswith("grace"))
    assert "access" in line and "grace,deploy" in line and "active" in line
    listed = json.loads(cluster.cgctl("users", "ls", "--format=json").stdout)
    grace_json = next(u for u in listed if u["metadata"]["name"] == "grace")
    assert "password" not in json.dumps(grace_json)
    assert "totp" not in json.dumps(grace_json)

    duplicate = cluster.cgctl("users", "add", "grace", "--roles=access", check=False)
    assert duplicate.stderr.strip() == 'error: user "grace" already exists'

    reset = cluster.cgctl("users", "reset", "grace").stdout
    token = invite_token(reset)
    assert cluster.login(grace, check=False).returncode == 3  # old password is gone
    status, invite = cluster.web("GET", f"/v1/invites/{token}")
    assert status == 200 and invite["user"] == "grace"

    assert cluster.cgctl("users", "rm", "grace").returncode == 0
    assert "grace" not in cluster.cgctl("users", "ls").stdout
    status, _ = cluster.web("GET", f"/v1/invites/{token}")
    assert status == 404


def test_invite_refusals(cluster: Cluster) -> None:
    out = cluster.cgctl("users", "add", "henry", "--roles=access").stdout
    token = invite_token(out)
    status, body = cluster.web("POST", f"/v1/invites/{token}", {"password": "short", "otp": "1"})
    assert status == 400
    assert body["message"] == "password must be at least 12 characters"
    status, body = cluster.web(
        "POST", f"/v1/invites/{token}", {"password": "long enough password", "otp": "000000"}
    )
    assert status == 403
    assert "one-time code" in body["message"]
    for bad in ("..%2F..%2Fetc%2Fpasswd", "x" * 300, "ABCDEF"):
        status, body = cluster.web("GET", f"/v1/invites/{bad}")
        assert status in (400, 404), (bad, status)
        assert "Traceback" not in json.dumps(body)


def test_tokens_add_ls_rm(cluster: Cluster) -> None:
    out = cluster.cgctl("tokens", "add", "--type=node", "--ttl=10m").stdout
    token = out.split("The invite token: ")[1].split()[0]
    assert f"certgate start --roles node --token {token} --auth-server {cluster.auth_addr}" in out
    assert "--ca-pin sha256:" in out
    assert token in cluster.cgctl("tokens", "ls").stdout
    assert cluster.cgctl("tokens", "rm", token).returncode == 0
    assert token not in cluster.cgctl("tokens", "ls").stdout
    missing = cluster.cgctl("tokens", "rm", token, check=False)
    assert missing.returncode == 4
    assert missing.stderr.strip() == f'error: token "{token}" not found'


def test_audit_log_records_admin_actions(cluster: Cluster) -> None:
    cluster.cgctl("users", "add", "ivy", "--roles=access")
    events = json.loads(
        cluster.cgctl("audit", "ls", "--event=user.create", "--format=json", "--since=1h").stdout
    )
    created = [e for e in events if e.get("name") == "ivy"]
    assert created and created[0]["user"] == "admin"
    assert created[0]["code"] == "T1002I"
    assert "user.create" in cluster.cgctl("audit", "ls", "--limit=5").stdout
    lines = (cluster.data_dir / "log" / "events.log").read_text().splitlines()
    assert any(json.loads(line).get("name") == "ivy" for line in lines)
