"""Unix accounts for tests: made with useradd, usable by sshd (password field "*")."""

from __future__ import annotations

import pwd
import subprocess


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
    # Without a password useradd leaves "!" (locked), which sshd without PAM refuses.
    subprocess.run(["usermod", "-p", "*", name], check=True)
    return pwd.getpwnam(name)
