"""Logins are refused alike for every wrong guess, codes are single-use, and guessing
locks the name out."""

from __future__ import annotations

import json

from tests.support.cluster import Cluster, User

REFUSAL = "error: access denied: invalid user name, password or one-time code"


def test_unknown_user_bad_password_and_bad_code_read_the_same(cluster: Cluster) -> None:
    alice = cluster.add_user("refusal-alice", logins="alice")
    ghost = User("refusal-ghost", alice.password, alice.otp, alice.home)
    wrong_password = User(alice.name, "not the password at all", alice.otp, alice.home)

    # Wrong guesses carry a made-up code so the real device's codes stay unused.
    outcomes = [
        cluster.login(ghost, check=False, otp="123456"),
        cluster.login(wrong_password, check=False, otp="123456"),
        cluster.login(alice, check=False, otp="000000"),
    ]
    for result in outcomes:
        assert result.returncode == 3
        assert result.stderr.strip() == REFUSAL
        assert "Traceback" not in result.stderr
    assert cluster.login(alice).returncode == 0


def test_a_one_time_code_cannot_be_used_twice(cluster: Cluster) -> None:
    bob = cluster.add_user("replay-bob", logins="bob")
    assert cluster.login(bob).returncode == 0
    replay = cluster.login(bob, check=False, otp=bob.otp.used_code())
    assert replay.returncode == 3
    assert replay.stderr.strip() == REFUSAL
    events = audit(cluster, "user.login.failure", "replay-bob")
    assert events[0]["error"] == "one-time code already used"


def test_five_failures_lock_the_account_even_for_the_right_password(cluster: Cluster) -> None:
    carol = cluster.add_user("lockout-carol", logins="carol")
    wrong = User(carol.name, "definitely-wrong-password", carol.otp, carol.home)
    for _ in range(5):
        assert cluster.login(wrong, check=False, otp="123456").returncode == 3
    locked = cluster.login(carol, check=False)
    assert locked.returncode != 0
    assert "too many failed logins" in locked.stderr
    assert len(audit(cluster, "user.login.failure", "lockout-carol")) == 5
    assert audit(cluster, "user.login.locked", "lockout-carol")


def test_unknown_names_lock_out_the_same_way(cluster: Cluster) -> None:
    # Otherwise the lockout itself would tell which names exist.
    dave = cluster.add_user("lockout-dave", logins="dave")
    ghost = User("lockout-ghost", dave.password, dave.otp, dave.home)
    for _ in range(5):
        cluster.login(ghost, check=False, otp="123456")
    assert "too many failed logins" in cluster.login(ghost, check=False, otp="123456").stderr


def test_every_attempt_is_audited(cluster: Cluster) -> None:
    erin = cluster.add_user("audited-erin", logins="erin")
    cluster.login(erin)
    cluster.login(User(erin.name, "wrong-password-123", erin.otp, erin.home), check=False, otp="1")
    assert audit(cluster, "user.login", "audited-erin")[0]["success"] is True
    failure = audit(cluster, "user.login.failure", "audited-erin")[0]
    assert failure["success"] is False
    assert failure["error"] == "bad password"
    assert failure["addr"].startswith("127.0.0.1")


def audit(cluster: Cluster, event: str, user: str) -> list[dict[str, object]]:
    out = cluster.cgctl("audit", "ls", f"--event={event}", f"--user={user}", "--format=json")
    events: list[dict[str, object]] = json.loads(out.stdout)
    return events
