"""Joining a cluster: a host trades a join token for its service certificates.

On first contact the host does not know the cluster's CA yet. It fetches the host TLS
CA over an unverified connection, checks it against the `--ca-pin` that
`cgctl tokens add` printed, and only then sends the token over a verified connection.
Without a pin it trusts what it gets (and says so in the log).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.api.bundle import CertBundle
from certgate.errors import AccessDenied, ConnectionProblem
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles, new_key
from certgate.transport import client_context

log = logging.getLogger("certgate.join")


def pin_of(ca_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(ca_pem.encode())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


async def fetch_host_ca(auth_addr: str, ca_pin: str) -> str:
    url = f"https://{auth_addr}/v1/authorities/tls-host/export"
    try:
        async with httpx.AsyncClient(verify=client_context(insecure=True), timeout=10) as http:
            response = await http.get(url)
    except httpx.HTTPError as exc:
        raise ConnectionProblem(f"cannot reach auth at {auth_addr}: {exc}") from exc
    if response.status_code != 200:
        raise ConnectionProblem(f"auth at {auth_addr} answered {response.status_code}")
    ca_pem = response.text
    if ca_pin:
        pins = {
            pin_of(block + "-----END CERTIFICATE-----\n")
            for block in ca_pem.split("-----END CERTIFICATE-----")
            if block.strip()
        }
        if ca_pin not in pins:
            raise AccessDenied(
                f"access denied: the CA of auth at {auth_addr} does not match --ca-pin; "
                "check the address or the pin"
            )
    else:
        log.warning("joining without --ca-pin: trusting the CA that %s presents", auth_addr)
    return ca_pem


async def join_cluster(
    auth_addrs: str | Sequence[str],
    token: str,
    ca_pin: str,
    role: str,
    name: str,
    principals: list[str],
) -> IdentityFiles:
    """Join through the first of `auth_addrs` that answers (any auth of the cluster can
    take the token: they share one store)."""
    failure: ConnectionProblem | None = None
    for auth_addr in [auth_addrs] if isinstance(auth_addrs, str) else auth_addrs:
        try:
            ca_pem = await fetch_host_ca(auth_addr, ca_pin)
        except ConnectionProblem as exc:
            log.warning("joining through %s failed: %s", auth_addr, exc)
            failure = exc
            continue
        return await _join_through(auth_addr, ca_pem, token, role, name, principals)
    raise failure or ConnectionProblem("no auth address to join through")


async def _join_through(
    auth_addr: str, ca_pem: str, token: str, role: str, name: str, principals: list[str]
) -> IdentityFiles:
    key_pem, public_key = new_key()
    client = AsyncAuthClient(f"https://{auth_addr}", client_context([ca_pem]))
    try:
        data = await client.call(
            "POST",
            "/v1/join",
            json={
                "token": token,
                "role": role,
                "public_key": public_key,
                "name": name,
                "principals": principals,
            },
        )
    finally:
        await client.close()
    return IdentityFiles(key_pem=key_pem, bundle=CertBundle.from_dict(data))
