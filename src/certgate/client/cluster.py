"""How cgctl and cgsh reach the auth API.

- On the auth host: the admin identity in `<data_dir>/admin` talks to auth directly.
- Anywhere else: the logged-in profile talks to the proxy, which passes the user's
  certificate on to auth (`/v1/api/...`); the user's roles decide what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from certgate.client.expiry import expired_message
from certgate.client.profile import (
    CertificateExpired,
    NotLoggedIn,
    Profile,
    load_profile,
)
from certgate.client.proxy_client import ProxyClient, connect_proxy
from certgate.errors import AccessDenied, NotFound
from certgate.rpc.auth_client import AuthClient
from certgate.rpc.identity_files import IdentityFiles


@dataclass
class ClusterAPI:
    client: AuthClient
    prefix: str
    who: str

    def call(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        return self.client.call(method, self.prefix + path, json=json, params=params)

    def call_status(
        self, method: str, path: str, json: Any = None, params: Any = None
    ) -> tuple[Any, int]:
        return self.client.call_status(method, self.prefix + path, json=json, params=params)

    def download(self, path: str, out: BinaryIO, params: Any = None) -> int:
        return self.client.download(self.prefix + path, out, params=params)

    def close(self) -> None:
        self.client.close()


def default_data_dirs() -> list[Path]:
    if os.geteuid() == 0:
        return [Path("/var/lib/certgate")]
    return [Path.home() / ".local" / "share" / "certgate"]


def connect_admin(data_dir: Path) -> ClusterAPI:
    admin_dir = data_dir / "admin"
    identity = IdentityFiles.load(admin_dir)
    try:
        auth_addr = (admin_dir / "auth_addr").read_text().strip()
    except OSError as exc:
        raise NotFound(f"no auth address in {admin_dir}") from exc
    client = AuthClient(f"https://{auth_addr}", identity.tls_context())
    return ClusterAPI(client, "/v1", "admin")


def connect_profile(
    profile: Profile | None = None, identity: IdentityFiles | None = None
) -> ClusterAPI:
    """Through the profile's proxy with its pin, as the profile's identity (or
    `identity`); refused here, before dialling, once that certificate expired."""
    profile = profile or load_profile()
    if identity is None:
        return ClusterAPI(connect_proxy(profile), "/v1/api", profile.user)
    expires = identity.bundle.identity.expires
    if expires <= datetime.now(UTC):
        raise CertificateExpired(expired_message(expires))
    return ClusterAPI(ProxyClient(profile.proxy, profile.pin, identity), "/v1/api", profile.user)


def connect(data_dir: Path | None) -> ClusterAPI:
    """The admin identity when a data dir with one is given or found, else the profile."""
    candidates = [data_dir] if data_dir else [*_env_data_dir(), *default_data_dirs()]
    for candidate in candidates:
        if (candidate / "admin" / "bundle.json").exists():
            return connect_admin(candidate)
    if data_dir:
        raise NotFound(f"no admin identity in {data_dir}: is this the auth server's data dir?")
    try:
        return connect_profile()
    except NotLoggedIn:
        raise AccessDenied(
            "no cluster to talk to: run cgctl on the auth host (--data-dir DIR) "
            "or log in with cgsh login first"
        ) from None


def _env_data_dir() -> list[Path]:
    value = os.environ.get("CERTGATE_DATA_DIR")
    return [Path(value)] if value else []
