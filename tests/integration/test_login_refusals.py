"""Logins are refused alike for every wrong guess, codes are single-use, and guessing
locks the name out."""

from __future__ import annotations

import asyncio
import json

import httpx

from certgate.api.certs import generate_private_key, public_key_openssh
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


def test_an_empty_password_on_standard_input_is_said_before_anything_is_sent(
    cluster: Cluster,
) -> None:
    erin = cluster.add_user("refusal-erin", logins="erin")
    empty = User(erin.name, "", erin.otp, erin.home)
    result = cluster.login(empty, check=False, otp="123456")
    assert result.returncode == 2
    assert "no password on standard input" in result.stderr, result.stderr
    assert not audit(cluster, "user.login.failure", "refusal-erin")  # nothing reached auth


REUSED = "error: access denied: this one-time code was already used; wait for the next one"


def test_a_one_time_code_cannot_be_used_twice(cluster: Cluster) -> None:
    bob = cluster.add_user("replay-bob", logins="bob")
    assert cluster.login(bob).returncode == 0
    replay = cluster.login(bob, check=False, otp=bob.otp.used_code())
    assert replay.returncode == 3
    # The password was right: the person is told why, not handed the generic refusal.
    assert replay.stderr.strip() == REUSED
    events = audit(cluster, "user.login.failure", "replay-bob")
    assert events[0]["error"] == "one-time code already used"


def test_a_reused_code_with_a_wrong_password_reads_like_any_guess(cluster: Cluster) -> None:
    gil = cluster.add_user("replay-gil", logins="gil")
    assert cluster.login(gil).returncode == 0
    wrong = User(gil.name, "wrong-password-for-gil", gil.otp, gil.home)
    replay = cluster.login(wrong, check=False, otp=gil.otp.used_code())
    assert replay.stderr.strip() == REFUSAL


def test_reused_codes_do_not_count_towards_the_lockout(cluster: Cluster) -> None:
    hal = cluster.add_user("replay-hal", logins="hal")
    assert cluster.login(hal).returncode == 0
    for _ in range(6):
        replay = cluster.login(hal, check=False, otp=hal.otp.used_code())
        assert replay.stderr.strip() == REUSED
    # Six were refused as reused, none locked the account: the next code logs in.
    assert cluster.login(hal).returncode == 0
    assert len(audit(cluster, "user.login.failure", "replay-hal")) == 6
    assert not audit(cluster, "user.login.locked", "replay-hal")
    # Whereas wrong guesses still count (the same lockout check sees them).
    wrong = User(hal.name, "wrong-password-for-hal", hal.otp, hal.home)
    for _ in range(5):
        cluster.login(wrong, check=False, otp="123456")
    assert "too many failed logins" in cluster.login(hal, check=False).stderr


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


def test_concurrent_guesses_cannot_outrun_the_lockout(cluster: Cluster) -> None:
    frank = cluster.add_user("lockout-frank", logins="frank")
    key = public_key_openssh(generate_private_key())

    async def guess(client: httpx.AsyncClient, n: int) -> tuple[int, str]:
        body = {"user": frank.name, "password": f"wrong-guess-{n:04d}", "otp": "123456"}
        answer = await client.post("/v1/login", json={**body, "public_key": key})
        return answer.status_code, answer.json()["message"]

    async def attack() -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(
            base_url=f"https://{cluster.proxy_addr}", verify=False, timeout=60, limits=limits
        ) as client:
            return await asyncio.gather(*(guess(client, n) for n in range(60)))

    outcomes = asyncio.run(attack())
    verified = audit(cluster, "user.login.failure", frank.name)
    refused = [message for _, message in outcomes if "too many failed logins" in message]
    # Every guess was answered, at most five were checked, the rest met the lockout.
    assert len(outcomes) == 60
    assert len(verified) <= 5, f"{len(verified)} guesses were checked"
    assert len(refused) >= 55
    assert len(audit(cluster, "user.login.locked", frank.name)) == len(refused)
    # The right password is refused too until an admin unlocks the name.
    assert "too many failed logins" in cluster.login(frank, check=False).stderr
    cluster.cgctl("users", "unlock", frank.name)
    assert cluster.login(frank).returncode == 0
    out = cluster.cgctl("audit", "ls", "--event=user.unlock", "--format=json").stdout
    assert any(event["name"] == frank.name for event in json.loads(out))
