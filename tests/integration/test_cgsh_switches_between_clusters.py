"""One person, two clusters: `cgsh login --proxy=B` adds a profile, `cgsh status` lists
both, `cgsh login CLUSTER` switches back, and each proxy keeps its own pin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, User
from tests.support.otp import OtpDevice


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Cluster]]:
    a = Cluster(tmp_path_factory.mktemp("alpha"), cluster_name="alpha.test")
    b = Cluster(tmp_path_factory.mktemp("beta"), cluster_name="beta.test")
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def as_home(user: User, home: Path) -> User:
    return User(user.name, user.password, user.otp, home)


def status(cluster: Cluster, user: User) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cluster.cgsh(user, "status", "--format=json").stdout)
    return data


def test_login_to_a_second_cluster_and_switch_back(
    two: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    a, b = two
    home = tmp_path / "home"
    ann_a = as_home(a.add_user("ann"), home)
    ann_b = as_home(b.add_user("ann-b"), home)
    a.login(ann_a)
    b.login(ann_b)
    now = status(b, ann_b)
    assert now["cluster"] == "beta.test"
    others = [(o["cluster"], o["user"]) for o in now["other_clusters"]]
    assert others == [("alpha.test", "ann")]
    text = b.cgsh(ann_b, "status").stdout
    assert "cgsh login alpha.test" in text

    # Back to alpha: its certificates are still valid, so no password is asked for.
    switched = a.cgsh(ann_a, "login", "alpha.test", input="")
    assert "alpha.test" in switched.stdout
    back = status(a, ann_a)
    assert (back["cluster"], back["user"]) == ("alpha.test", "ann")
    assert [o["cluster"] for o in back["other_clusters"]] == ["beta.test"]
    # Commands now talk to alpha (beta has no user "ann").
    assert a.cgsh(ann_a, "ls").returncode == 0
    assert (home / "keys" / "key-cert.pub").exists()

    # Logged out of alpha, still logged in to beta: status says how to get back, and
    # the switch asks for nothing while beta's certificates are valid.
    assert a.cgsh(ann_a, "logout").stdout.strip() == "Logged out."
    gone = a.cgsh(ann_a, "status", check=False)
    assert gone.returncode == 3 and "cgsh login beta.test" in gone.stderr
    assert "beta.test" in b.cgsh(ann_b, "login", "beta.test", input="").stdout
    assert status(b, ann_b)["cluster"] == "beta.test"


def test_each_proxy_keeps_its_pin(two: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    a, b = two
    home = tmp_path / "home"
    bo_a = as_home(a.add_user("bo"), home)
    bo_b = as_home(b.add_user("bo"), home)
    a.login(bo_a)
    b.login(bo_b)
    # A new login to alpha, with beta current: alpha's pin is found, no --insecure.
    again = a.cgsh(
        bo_a, "login", f"--proxy={a.proxy_addr}", "--user=bo", f"--otp={bo_a.otp.next_code()}",
        input=bo_a.password + "\n",
    )  # fmt: skip
    assert "alpha.test" in again.stdout
    # Whereas a proxy never seen is still refused without --insecure (the check is live).
    stranger = as_home(bo_b, tmp_path / "fresh")
    fresh = b.cgsh(stranger, "login", f"--proxy={b.proxy_addr}", "--user=bo", "--otp=1",
                   input="x\n", check=False)  # fmt: skip
    assert "cannot verify the TLS certificate" in fresh.stderr


def test_an_unknown_cluster_name_is_refused(two: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    a, _ = two
    nobody = User("nobody", "x", OtpDevice("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"), tmp_path / "empty")
    result = a.cgsh(nobody, "login", "gamma.test", check=False)
    assert result.returncode == 4
    assert 'no login to cluster "gamma.test"' in result.stderr
