"""The node's account cache: a changed account database is read again at the next login."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from certgate.errors import NotFound
from certgate.node.accounts import AccountCache, files_only
from certgate.node.session import UnixAccount
from tests.support.unix import ensure_user

LOGIN = "cgacct"
GROUP = "cgacctgrp"
_LOCK = "/tmp/certgate-tests-useradd.lock"  # tests/support/unix.py's: one writer at a time


def _as_root(*argv: str) -> None:
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def group() -> Iterator[int]:
    if os.geteuid() != 0:
        pytest.fail("needs root to make accounts (make test runs as root)")
    ensure_user(LOGIN)
    subprocess.run(["groupdel", GROUP], capture_output=True)  # left by an interrupted run
    _as_root("groupadd", GROUP)
    try:
        yield int(subprocess.check_output(["getent", "group", GROUP]).split(b":")[2])
    finally:
        _as_root("groupdel", GROUP)


def test_a_group_taken_away_is_gone_at_the_next_lookup(group: int) -> None:
    cache = AccountCache()
    before = cache.lookup(LOGIN)
    assert cache.lookup(LOGIN) is before  # kept: this machine's accounts come from files
    assert group not in before.groups
    _as_root("gpasswd", "-a", LOGIN, GROUP)
    assert group in cache.lookup(LOGIN).groups
    _as_root("gpasswd", "-d", LOGIN, GROUP)
    assert group not in cache.lookup(LOGIN).groups


def _account(name: str, gid: int = 100) -> UnixAccount:
    return UnixAccount(name, 1000, gid, (gid,), f"/home/{name}", "/bin/bash")


class _Files:
    def __init__(self, tmp_path: Path) -> None:
        self.passwd, self.group, self.nsswitch = (
            tmp_path / "passwd", tmp_path / "group", tmp_path / "nsswitch.conf",
        )  # fmt: skip
        self.passwd.write_text("a\n")
        self.group.write_text("g\n")
        self.nsswitch.write_text("passwd: files systemd\ngroup: files systemd\n")
        self.userdb = tmp_path / "userdb"
        self.lookups: list[str] = []
        self.gid = 100

    def lookup(self, login: str) -> UnixAccount:
        self.lookups.append(login)
        if login == "ghost":
            raise NotFound("no such user")
        return _account(login, self.gid)

    def cache(self) -> AccountCache:
        return AccountCache(
            self.lookup,
            (str(self.passwd), str(self.group), str(self.nsswitch)),
            str(self.nsswitch),
            (str(self.userdb),),
        )


def test_any_change_to_the_databases_forgets_every_answer(tmp_path: Path) -> None:
    files = _Files(tmp_path)
    cache = files.cache()
    cache.lookup("alice")
    cache.lookup("alice")
    assert files.lookups == ["alice"]
    for database in (files.passwd, files.group):
        files.gid += 1
        database.write_text(database.read_text() + "changed\n")
        assert cache.lookup("alice").gid == files.gid
    assert files.lookups == ["alice"] * 3


def test_a_missing_account_is_never_kept(tmp_path: Path) -> None:
    files = _Files(tmp_path)
    cache = files.cache()
    for _ in range(2):
        with pytest.raises(NotFound):
            cache.lookup("ghost")
    assert files.lookups == ["ghost", "ghost"]


def test_other_name_services_or_userdb_records_are_read_every_time(tmp_path: Path) -> None:
    files = _Files(tmp_path)
    cache = files.cache()
    cache.lookup("alice")
    cache.lookup("alice")
    assert len(files.lookups) == 1  # the control: kept while only files answer
    files.userdb.mkdir()
    cache.lookup("alice")
    cache.lookup("alice")
    assert len(files.lookups) == 3
    files.userdb.rmdir()
    files.nsswitch.write_text("passwd: files ldap\ngroup: files ldap\n")
    cache.lookup("alice")
    cache.lookup("alice")
    assert len(files.lookups) == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("passwd: files\ngroup: files\n", True),
        ("passwd:  files systemd # comment\ngroup: files systemd\n", True),
        ("passwd: files sss\ngroup: files\n", False),
        ("passwd: compat\ngroup: compat\n", False),
        ("group: files\n", False),
    ],
)
def test_which_name_service_configurations_are_files_only(text: str, expected: bool) -> None:
    assert files_only(text) is expected
