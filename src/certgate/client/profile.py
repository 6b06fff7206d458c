"""The user's profile: which proxy, which user, how the proxy is trusted, and the keys.

$CERTGATE_HOME (default ~/.certgate)/
  profile.json        {"proxy": "host:3080", "user": "alice", "cluster": ..., "ssh_proxy": ...,
                       "pin": {"kind": "ca"|"spki"|"public", "sha256": ..., "ca_pem": ...}}
  keys/               IdentityFiles: key, key-cert.pub, tls.crt, cas.pem, known_hosts, ...
  profiles/<proxy>/   the same two for every other cluster logged in to (parked)

The current profile always lives at the top, so everything that reads it (and OpenSSH
configs that name ~/.certgate/keys) is the same with one cluster or several. Logging in
to another proxy parks the current profile under profiles/; `cgsh login CLUSTER` swaps
a parked one back. The pin is what the proxy's certificate was trusted by at the first
login (client/proxy_trust.py), kept per proxy; `--insecure` is never remembered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from certgate.atomic_files import write_atomic
from certgate.client.expiry import expired_message
from certgate.client.kube_credentials import write_credential
from certgate.client.proxy_trust import ProxyPin, spki_pin_of_pem
from certgate.errors import AccessDenied, CertgateError, NotFound
from certgate.rpc.identity_files import IdentityFiles


class NotLoggedIn(AccessDenied):
    """No profile, or no keys in it."""


class CertificateExpired(AccessDenied):
    """The profile's certificates are past their expiry: a new login is needed."""


def home() -> Path:
    return Path(os.environ.get("CERTGATE_HOME") or Path.home() / ".certgate")


@dataclass(frozen=True)
class Profile:
    proxy: str
    user: str
    cluster: str
    # How the proxy's certificate is checked (None only in a profile not yet saved).
    pin: ProxyPin | None = None
    # The proxy's SSH jump host, HOST:PORT, as the proxy announces it.
    ssh_proxy: str = ""

    @property
    def keys_dir(self) -> Path:
        return home() / "keys"

    def identity(self) -> IdentityFiles:
        """The saved keys and certificates, expired or not (for `cgsh status`)."""
        try:
            return IdentityFiles.load(self.keys_dir)
        except NotFound:
            raise NotLoggedIn("not logged in: run cgsh login") from None

    def valid_identity(self, now: datetime | None = None) -> IdentityFiles:
        """The keys and certificates to dial with; refused before dialling once expired,
        so an expired login never reads as a network failure."""
        identity = self.identity()
        expires = identity.bundle.identity.expires
        if expires <= (now or datetime.now(UTC)):
            raise CertificateExpired(expired_message(expires))
        return identity

    def save_keys(self, identity: IdentityFiles) -> None:
        """Replace the keys and certificates in use (a login, a grant assumed or
        dropped), with everything derived from them: the exec credential kubectl reads."""
        identity.save(self.keys_dir)
        write_credential(self.keys_dir)

    def save(self, identity: IdentityFiles) -> None:
        directory = home()
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        _make_current(self.proxy)
        shutil.rmtree(self.keys_dir, ignore_errors=True)  # no stale files of a past login
        self.save_keys(identity)
        document = {
            "proxy": self.proxy,
            "user": self.user,
            "cluster": self.cluster,
            "ssh_proxy": self.ssh_proxy,
            "pin": self.pin.to_dict() if self.pin else None,
        }
        write_atomic(directory / "profile.json", json.dumps(document, indent=2) + "\n")


def load_profile() -> Profile:
    return _read_profile(home())


def _read_profile(directory: Path) -> Profile:
    path = directory / "profile.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotLoggedIn("not logged in: run cgsh login --proxy=HOST:3080 --user=NAME") from None
    except (OSError, ValueError) as exc:
        raise AccessDenied(f"cannot read {path}: {exc}; log in again") from exc
    pin = ProxyPin.from_dict(data.get("pin"))
    if pin is None and data.get("insecure"):
        pin = _legacy_pin()
    return Profile(
        proxy=str(data["proxy"]),
        user=str(data["user"]),
        cluster=str(data.get("cluster", "")),
        pin=pin,
        ssh_proxy=str(data.get("ssh_proxy", "")),
    )


def _legacy_pin() -> ProxyPin | None:
    """A profile from before pins, saved with --insecure: keep trusting the cluster CA
    its login received (the trust it already had), never "anything" again."""
    try:
        host_ca = IdentityFiles.load(home() / "keys").bundle.tls_cas[0]
    except (CertgateError, IndexError):
        return None
    return ProxyPin("ca", spki_pin_of_pem(host_ca), host_ca)


def parked_profiles() -> list[Profile]:
    """The profiles of the other clusters logged in to, by cluster name."""
    found: list[Profile] = []
    for directory in sorted(_parked_root().glob("*/")):
        try:
            found.append(_read_profile(directory))
        except AccessDenied:
            continue  # half-written or damaged: not offered
    return sorted(found, key=lambda p: (p.cluster, p.proxy))


def parked_identity(profile: Profile) -> IdentityFiles | None:
    try:
        return IdentityFiles.load(_parked_dir(profile.proxy) / "keys")
    except CertgateError:
        return None


def find_profile(name: str) -> Profile | None:
    """The current or a parked profile whose cluster name or proxy address is `name`."""
    candidates: list[Profile] = []
    try:
        candidates.append(load_profile())
    except AccessDenied:
        pass
    candidates += parked_profiles()
    for profile in candidates:
        if name in (profile.cluster, profile.proxy):
            return profile
    return None


def pin_for(proxy: str) -> ProxyPin | None:
    """The pin remembered for this proxy, whichever profile (current or parked) has it."""
    try:
        current = load_profile()
        if current.proxy == proxy:
            return current.pin
    except AccessDenied:
        pass
    try:
        return _read_profile(_parked_dir(proxy)).pin
    except AccessDenied:
        return None


def switch_to(proxy: str) -> Profile:
    """Makes the profile of `proxy` the current one (parking the current one)."""
    _make_current(proxy)
    return load_profile()


def _make_current(proxy: str) -> None:
    """Parks the current profile if it is another proxy's, and brings back the parked
    profile of `proxy` if there is one. Moves whole directories: nothing is copied."""
    directory = home()
    try:
        current: Profile | None = load_profile()
    except AccessDenied:
        current = None
    if current is not None and current.proxy == proxy:
        return
    if current is not None:
        parked = _parked_dir(current.proxy)
        shutil.rmtree(parked, ignore_errors=True)
        parked.mkdir(parents=True, mode=0o700)
        os.replace(directory / "profile.json", parked / "profile.json")
        if (directory / "keys").exists():
            os.replace(directory / "keys", parked / "keys")
    wanted = _parked_dir(proxy)
    if (wanted / "profile.json").exists():
        shutil.rmtree(directory / "keys", ignore_errors=True)
        if (wanted / "keys").exists():
            os.replace(wanted / "keys", directory / "keys")
        os.replace(wanted / "profile.json", directory / "profile.json")
        shutil.rmtree(wanted, ignore_errors=True)


def _parked_root() -> Path:
    return home() / "profiles"


def _parked_dir(proxy: str) -> Path:
    # host:port -> a file name; "[" "]" ":" of IPv6 addresses become "_".
    return _parked_root() / re.sub(r"[^A-Za-z0-9.-]", "_", proxy)


def remove_profile() -> bool:
    directory = home()
    found = (directory / "profile.json").exists()
    shutil.rmtree(directory / "keys", ignore_errors=True)
    (directory / "profile.json").unlink(missing_ok=True)
    return found
