"""The node's account lookups, kept while the account databases are unchanged.

Every login looks its Unix account up (session.lookup_account: the passwd entry, then every
group it is in). With Debian's `passwd: files systemd`, the group list alone is ~0.75 ms:
glibc's systemd module searches six userdb directories on every call, even where none
exists. sshd pays that per login too; a node serving many logins need not.

An answer is kept only while nothing it came from can have changed, checked on every
lookup (a few stat calls, ~30 µs):

- /etc/passwd, /etc/group and /etc/nsswitch.conf are the same files (inode, size, mtime:
  useradd, usermod, userdel, gpasswd and editors replace or rewrite them);
- the name service reads accounts from `files` (and `systemd`) only, and none of
  systemd's userdb directories exists, so `files` is all there is to read.

Anything else (LDAP, SSSD, a userdb record) is looked up every time, as before. A missing
account is never kept: it may be created a moment later.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from certgate.node.session import UnixAccount, lookup_account

DATABASES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
NSSWITCH = "/etc/nsswitch.conf"
# Where glibc's systemd module (nss-systemd) looks for accounts besides the daemon.
USERDB_PATHS = (
    "/run/systemd/userdb",
    "/etc/userdb",
    "/run/userdb",
    "/run/host/userdb",
    "/usr/local/lib/userdb",
    "/usr/lib/userdb",
)
CACHEABLE_SOURCES = frozenset({("files",), ("files", "systemd")})
MAX_ACCOUNTS = 4096

Signature = tuple[tuple[int, int, int], ...]


def _signature(paths: tuple[str, ...]) -> Signature | None:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def files_only(nsswitch_text: str) -> bool:
    """Whether passwd and group come from files (and nss-systemd) and nothing else."""
    sources: dict[str, tuple[str, ...]] = {}
    for line in nsswitch_text.splitlines():
        database, _, rest = line.partition("#")[0].partition(":")
        sources[database.strip()] = tuple(rest.split())
    return all(sources.get(name) in CACHEABLE_SOURCES for name in ("passwd", "group"))


class AccountCache:
    def __init__(
        self,
        lookup: Callable[[str], UnixAccount] = lookup_account,
        databases: tuple[str, ...] = DATABASES,
        nsswitch: str = NSSWITCH,
        userdb_paths: tuple[str, ...] = USERDB_PATHS,
    ) -> None:
        self._lookup = lookup
        self._databases = databases
        self._nsswitch = nsswitch
        self._userdb_paths = userdb_paths
        self._seen: Signature | None = None
        self._cacheable = False
        self._accounts: dict[str, UnixAccount] = {}

    def lookup(self, login: str) -> UnixAccount:
        """The account `login` (NotFound if absent), from the cache when that is exact."""
        if not self._current():
            return self._lookup(login)
        account = self._accounts.get(login)
        if account is None:
            account = self._lookup(login)
            if len(self._accounts) >= MAX_ACCOUNTS:
                self._accounts.clear()
            self._accounts[login] = account
        return account

    def _current(self) -> bool:
        """Whether cached answers still hold; forgets them when they may not."""
        signature = _signature(self._databases)
        if signature != self._seen:
            self._accounts.clear()
            self._seen = signature
            self._cacheable = signature is not None and self._reads_files_only()
        if any(os.path.lexists(path) for path in self._userdb_paths):
            self._accounts.clear()  # nss-systemd has records to read besides the files
            return False
        return self._cacheable

    def _reads_files_only(self) -> bool:
        try:
            with open(self._nsswitch, encoding="utf-8") as file:
                return files_only(file.read())
        except (OSError, UnicodeDecodeError):
            return False
