"""The user's profile: which proxy, which user, and the keys from the last login.

$CERTGATE_HOME (default ~/.certgate)/
  profile.json        {"proxy": "host:3080", "user": "alice", "cluster": ..., "insecure": false}
  keys/               IdentityFiles: key, key-cert.pub, tls.crt, cas.pem, known_hosts, ...
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from certgate.errors import AccessDenied, NotFound
from certgate.rpc.identity_files import IdentityFiles


def home() -> Path:
    return Path(os.environ.get("CERTGATE_HOME") or Path.home() / ".certgate")


@dataclass(frozen=True)
class Profile:
    proxy: str
    user: str
    cluster: str
    insecure: bool = False
    # The proxy's SSH jump host, HOST:PORT, as the proxy announces it.
    ssh_proxy: str = ""

    @property
    def keys_dir(self) -> Path:
        return home() / "keys"

    def identity(self) -> IdentityFiles:
        try:
            return IdentityFiles.load(self.keys_dir)
        except NotFound:
            raise AccessDenied("not logged in: run cgsh login") from None

    def save(self, identity: IdentityFiles) -> None:
        directory = home()
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        identity.save(self.keys_dir)
        (directory / "profile.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def load_profile() -> Profile:
    path = home() / "profile.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AccessDenied("not logged in: run cgsh login --proxy=HOST:3080 --user=NAME") from None
    except (OSError, ValueError) as exc:
        raise AccessDenied(f"cannot read {path}: {exc}; log in again") from exc
    return Profile(
        proxy=str(data["proxy"]),
        user=str(data["user"]),
        cluster=str(data.get("cluster", "")),
        insecure=bool(data.get("insecure", False)),
        ssh_proxy=str(data.get("ssh_proxy", "")),
    )


def remove_profile() -> bool:
    directory = home()
    found = (directory / "profile.json").exists()
    shutil.rmtree(directory / "keys", ignore_errors=True)
    (directory / "profile.json").unlink(missing_ok=True)
    return found
