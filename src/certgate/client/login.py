"""`cgsh login`: reach and check the proxy, then password + one-time code for certificates.

contact = reach(proxy, insecure)     GET /v1/ping; the proxy's certificate is checked
                                     (pin, system roots, or first use with --insecure)
... the CLI prompts for the password and code only now ...
login(contact, user, ...)            POST /v1/login with a new key; saves the profile
                                     with the pin (first use: what the handshake saw)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from certgate.api.bundle import CertBundle
from certgate.client.profile import NotLoggedIn, Profile, load_profile, pin_for
from certgate.client.proxy_client import ProxyClient
from certgate.client.proxy_trust import ProxyPin, first_pin, spki_pin
from certgate.errors import BadParameter
from certgate.rpc.identity_files import IdentityFiles, new_key

DEFAULT_PROXY_PORT = 3080


def proxy_address(value: str) -> str:
    """`https://host:port`, `https://host` (443), `host:port` or `host` (3080) -> host:port."""
    text = value.strip()
    try:
        if "://" in text:
            parts = urlsplit(text)
            if parts.scheme != "https" or parts.path not in ("", "/") or parts.query:
                raise BadParameter(f'proxy "{value}": use https://HOST:PORT or HOST:PORT')
            default = 443
        else:
            parts = urlsplit("//" + text)
            default = DEFAULT_PROXY_PORT
    except ValueError:  # an unclosed or invalid [IPv6] address
        raise BadParameter(f'proxy "{value}": use https://HOST:PORT or HOST:PORT') from None
    try:
        port = default if parts.port is None else parts.port
    except ValueError:
        raise BadParameter(f'proxy "{value}": the port must be a number') from None
    if port == 0:
        raise BadParameter(f'proxy "{value}": the port must be from 1 to 65535')
    host = parts.hostname
    if not host or parts.username or parts.password:
        raise BadParameter(f'proxy "{value}": use https://HOST:PORT or HOST:PORT')
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def last_login() -> Profile:
    """The profile of the last login, for `cgsh login` without flags."""
    try:
        return load_profile()
    except NotLoggedIn:
        raise NotLoggedIn(
            "no earlier login to repeat: cgsh login --proxy=HOST:PORT --user=NAME"
        ) from None


@dataclass
class Contact:
    """A proxy reached, its certificate accepted, before any secret was asked for."""

    proxy: str
    client: ProxyClient
    ping: dict[str, Any]
    # The certificate trusted on first use (--insecure, no pin yet), else None.
    first_seen: x509.Certificate | None = None

    def close(self) -> None:
        self.client.close()


def reach(proxy: str, insecure: bool) -> Contact:
    """Ping the proxy, checking its certificate against the profile's pin when this
    proxy has one, else the system's roots, else (with --insecure) trusting it now."""
    pin = _saved_pin(proxy)
    if pin is None or pin.kind == "public":
        pin = None if insecure else ProxyPin("public")
    client = ProxyClient(proxy, pin)
    try:
        ping = client.call("GET", "/v1/ping")
    except BaseException:
        client.close()
        raise
    seen = client.check.seen
    if pin is None and seen is not None:
        # Trusted on first use: the rest of this login (a new connection, maybe) must
        # meet the same certificate, so the password goes where the ping went.
        client.check.pin = ProxyPin("spki", spki_pin(seen))
        return Contact(proxy, client, ping, first_seen=seen)
    return Contact(proxy, client, ping)


def _saved_pin(proxy: str) -> ProxyPin | None:
    return pin_for(proxy)


def login(
    contact: Contact,
    user: str,
    password: str,
    otp: str,
    ttl: str | None,
    request_terms: dict[str, Any] | None = None,
) -> Profile:
    """Log in; `request_terms`, if given, receives what auth says the user must
    request at once (`request_access: always`), if anything."""
    key_pem, public_key = new_key()
    body: dict[str, Any] = {
        "user": user,
        "password": password,
        "otp": otp,
        "public_key": public_key,
    }
    if ttl:
        body["ttl"] = ttl
    data = contact.client.call("POST", "/v1/login", json=body)
    if request_terms is not None and isinstance(data.get("request_access"), dict):
        request_terms.update(data["request_access"])
    bundle = CertBundle.from_dict(data)
    identity = IdentityFiles(key_pem=key_pem, bundle=bundle)
    profile = Profile(
        proxy=contact.proxy,
        user=user,
        cluster=str(contact.ping["cluster_name"]),
        pin=(
            first_pin(contact.first_seen, bundle.tls_cas)
            if contact.first_seen is not None
            else contact.client.check.pin
        ),
        ssh_proxy=str(contact.ping.get("ssh_addr", "")),
    )
    profile.save(identity)
    return profile
