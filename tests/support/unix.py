"""Unix accounts for tests: made with useradd, usable by sshd (password field "*").

Test processes running side by side (pytest-xdist workers) may make the same account at
the same time: useradd then fails for one of them ("already exists", or /etc/passwd
locked). Making accounts under one file lock avoids both.
"""

from __future__ import annotations

import fcntl
import pwd
import subprocess
from collections.abc import Sequence

_LOCK = "/tmp/certgate-tests-useradd.lock"


def ensure_account(name: str, useradd_args: Sequence[str]) -> pwd.struct_passwd:
    """The account `name`, made with `useradd ARGS NAME` if it does not exist yet."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name)  # another worker made it meanwhile
        except KeyError:
            pass
        subprocess.run(["useradd", *useradd_args, name], check=True)
        return pwd.getpwnam(name)


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    ensure_account(name, ["-m", "-s", "/bin/bash"])
    # Without a password useradd leaves "!" (locked), which sshd without PAM refuses.
    subprocess.run(["usermod", "-p", "*", name], check=True)
    return pwd.getpwnam(name)
