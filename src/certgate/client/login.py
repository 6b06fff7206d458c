"""`cgsh login`: password + one-time code at the proxy, certificates for a new key."""

from __future__ import annotations

from typing import Any

from certgate.api.bundle import CertBundle
from certgate.client.profile import Profile, home
from certgate.rpc.auth_client import AuthClient
from certgate.rpc.identity_files import IdentityFiles, new_key
from certgate.transport import client_context


def _known_cas() -> list[str]:
    """The cluster CAs saved by an earlier login, to verify the proxy without --insecure."""
    try:
        return [(home() / "keys" / "cas.pem").read_text()]
    except OSError:
        return []


def login(
    proxy: str,
    user: str,
    password: str,
    otp: str,
    insecure: bool,
    ttl: str | None,
    request_terms: dict[str, Any] | None = None,
) -> Profile:
    """Log in; `request_terms`, if given, receives what auth says the user must
    request at once (`request_access: always`), if anything."""
    key_pem, public_key = new_key()
    context = client_context(_known_cas(), insecure=insecure)
    client = AuthClient(f"https://{proxy}", context)
    try:
        ping = client.call("GET", "/v1/ping")
        body: dict[str, Any] = {
            "user": user,
            "password": password,
            "otp": otp,
            "public_key": public_key,
        }
        if ttl:
            body["ttl"] = ttl
        data = client.call("POST", "/v1/login", json=body)
    finally:
        client.close()
    if request_terms is not None and isinstance(data.get("request_access"), dict):
        request_terms.update(data["request_access"])
    identity = IdentityFiles(key_pem=key_pem, bundle=CertBundle.from_dict(data))
    profile = Profile(
        proxy=proxy,
        user=user,
        cluster=str(ping["cluster_name"]),
        insecure=insecure,
        ssh_proxy=str(ping.get("ssh_addr", "")),
    )
    profile.save(identity)
    return profile
