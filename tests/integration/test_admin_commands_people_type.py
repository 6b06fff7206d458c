"""`cgctl` as admins type it: status at a glance, options after the subcommand, locks
that refuse a typo, durations that need a unit, ids by prefix."""

from __future__ import annotations

import json
import re

from tests.support.cluster import BIN, Cluster, run


def test_status_names_the_cluster_its_ca_keys_and_counts(cluster: Cluster) -> None:
    cluster.add_user("status-ann", logins="ann")
    out = cluster.cgctl("status").stdout
    assert "Cluster:  test.certgate" in out
    assert re.search(r"host_tls\s+sha256:[0-9a-f]{64}", out), out
    assert re.search(r"user_ssh\s+SHA256:[A-Za-z0-9+/]{43}", out), out
    data = json.loads(cluster.cgctl("status", "--format=json").stdout)
    assert data["counts"]["users"] >= 1
    assert set(data["counts"]) == {"nodes", "users", "sessions", "locks"}
    # The pin is the one a joining node is told to check.
    token = cluster.cgctl("tokens", "add", "--type=node", "--ttl=5m").stdout
    pins = {a["fingerprint"] for a in data["authorities"] if a["type"] == "host_tls"}
    assert any(pin in token for pin in pins), token


def test_global_options_may_follow_the_subcommand(cluster: Cluster) -> None:
    cgctl = str(BIN / "cgctl")
    after = run([cgctl, "users", "ls", "--data-dir", str(cluster.data_dir)])
    equals = run([cgctl, "users", "ls", f"--data-dir={cluster.data_dir}"])
    before = cluster.cgctl("users", "ls")
    assert after.stdout == equals.stdout == before.stdout


def test_lock_refuses_a_target_that_does_not_exist(cluster: Cluster) -> None:
    cluster.add_user("lock-target-bo", logins="bo")
    typo = cluster.cgctl("lock", "--user=lock-target-b0", "--ttl=10m", check=False)
    assert typo.returncode == 4
    assert typo.stderr.strip() == (
        'error: user "lock-target-b0" not found; did you mean "lock-target-bo"? '
        "(--force locks it anyway)"
    )
    assert "lock-target-b0" not in cluster.cgctl("get", "lock").stdout
    forced = cluster.cgctl("lock", "--user=lock-target-b0", "--ttl=10m", "--force")
    assert "user=lock-target-b0" in forced.stdout
    assert "lock-target-b0" in cluster.cgctl("get", "lock").stdout


def test_a_duration_without_a_unit_is_refused(cluster: Cluster) -> None:
    cluster.add_user("lock-ttl-cy", logins="cy")
    bare = cluster.cgctl("lock", "--user=lock-ttl-cy", "--ttl=10", check=False)
    assert bare.returncode == 2
    assert bare.stderr.strip() == 'error: invalid --ttl "10": give a unit: 10s, 10m or 10h'
    token = cluster.cgctl("tokens", "add", "--type=node", "--ttl=30", check=False)
    assert token.returncode == 2
    # Zero is no lifetime: refused by the flag's name, not by a field of the API.
    zero = cluster.cgctl("lock", "--user=lock-ttl-cy", "--ttl=0m", check=False)
    assert zero.returncode == 2
    assert zero.stderr.strip() == 'error: invalid --ttl "0m": must be longer than 0s'
    # A lock that has expired already would lock nothing: before, "Created a lock".
    past = cluster.cgctl(
        "lock", "--user=lock-ttl-cy", "--expires=2000-01-01T00:00:00Z", check=False
    )
    assert past.returncode == 2
    assert past.stderr.strip() == (
        'error: --expires "2000-01-01T00:00:00Z" has passed: give a time in the future'
    )
    assert "lock-ttl-cy" not in cluster.cgctl("get", "lock").stdout
    assert cluster.cgctl("lock", "--user=lock-ttl-cy", "--ttl=10s").returncode == 0


def test_an_audit_search_that_could_find_nothing_says_why(cluster: Cluster) -> None:
    """Before, each of these answered an empty list, as if there were no such events."""
    unit = 'error: invalid time "10": give a unit (10s, 10m, 10h) or an RFC 3339 time'
    typo = 'error: unknown event type "user.logn"; did you mean "user.login"?'
    empty = "error: since must be before until: this search can find nothing"
    cases = [(["--since=10"], unit), (["--event=user.logn"], typo)]
    cases.append((["--since=1h", "--until=2h"], empty))
    for flags, said in cases:
        result = cluster.cgctl("audit", "ls", *flags, check=False)
        assert (result.returncode, result.stderr.strip()) == (2, said)
    assert cluster.cgctl("audit", "ls", "--event=user.login", "--since=1h").returncode == 0
