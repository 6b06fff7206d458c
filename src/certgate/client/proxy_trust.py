"""Trust on first use for the proxy's TLS certificate, as OpenSSH does with host keys.

    first `cgsh login`        the proxy's certificate ...
      verifies against the system's roots       -> nothing to pin ("public"), checked as usual
      else, with --insecure: issued by the      -> pin the cluster CA (sha256 of its SPKI)
        cluster's host CA (the default proxy)      and require a proxy certificate under it
      else, with --insecure (own private cert)  -> pin the leaf's SPKI
      else                                      -> refused before any prompt: pass --insecure
    every later connection    checked against the pin during the TLS handshake, before one
                              byte of the request (a password, a certificate) is sent

The check runs inside the handshake through `SSLContext.sslsocket_class`: httpx's sync
transport calls `wrap_socket`, whose socket class is ours, so a mismatch fails the
connection itself. The failure is kept on the `PinCheck` so the caller reports it as a
changed certificate, not as a network error.

A certificate the pin accepted is remembered (`VerifiedLeaves`, in the profile's keys
directory) by the SHA-256 of its bytes, with its validity: meeting the same bytes again
under the same pin, while they are valid, is the same answer without parsing them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from certgate.api.identity import SYSTEM_PROXY
from certgate.atomic_files import write_atomic
from certgate.errors import AccessDenied, CertgateError
from certgate.transport import client_context

# cryptography is imported where a certificate is read: the profile (which holds a
# ProxyPin) is loaded by commands that never connect, such as `cgsh status`.
if TYPE_CHECKING:
    from cryptography import x509

PinKind = Literal["public", "ca", "spki"]


@dataclass(frozen=True)
class ProxyPin:
    """What the profile trusts the proxy by (saved in profile.json)."""

    kind: PinKind
    # "sha256:<hex>" of the pinned SubjectPublicKeyInfo (the CA's or the leaf's); "" for public.
    sha256: str = ""
    # For kind "ca": the pinned CA certificate, PEM.
    ca_pem: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "sha256": self.sha256, "ca_pem": self.ca_pem}

    @classmethod
    def from_dict(cls, data: Any) -> ProxyPin | None:
        if not isinstance(data, dict) or data.get("kind") not in ("public", "ca", "spki"):
            return None
        return cls(data["kind"], str(data.get("sha256", "")), str(data.get("ca_pem", "")))

    def describe(self) -> str:
        if self.kind == "ca":
            return f"a proxy certificate issued by cluster CA {self.sha256}"
        if self.kind == "spki":
            return f"certificate key {self.sha256}"
        return "a publicly trusted certificate"


class ProxyCertificateChanged(AccessDenied):
    """The proxy shows a certificate other than the one trusted at first login."""


def spki_pin(cert: x509.Certificate) -> str:
    """ "sha256:<hex>" of the certificate's SubjectPublicKeyInfo: for the host CA, the
    same value as the `--ca-pin` that `cgctl tokens add` prints."""
    from cryptography.hazmat.primitives import serialization

    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def spki_pin_of_pem(cert_pem: str) -> str:
    from cryptography import x509

    return spki_pin(x509.load_pem_x509_certificate(cert_pem.encode()))


# Proxy certificates remembered per profile: a few, for proxies behind one address.
VERIFIED_LEAVES = 4


@dataclass(frozen=True)
class VerifiedLeaves:
    """Proxy certificates a pin accepted, by the SHA-256 of their DER bytes.

    Checking a certificate against the pin needs cryptography's x509 module: importing
    it was 35 ms of CPU on every cgsh command that connects (a sixth of `cgsh ls`). The
    same bytes are the same certificate, already found issued by the pinned CA to the
    proxy (or holding the pinned key): only their validity is left to check. Kept in
    the keys directory, which a login empties and parking moves with the profile; a
    file that cannot be read or written only means the full check.
    """

    path: Path

    def vouch(self, der: bytes, pin: ProxyPin) -> bool:
        digest, now = hashlib.sha256(der).hexdigest(), time.time()
        return any(
            entry.get("sha256") == digest
            and entry.get("pin") == _pin_id(pin)
            and _number(entry.get("not_before")) <= now <= _number(entry.get("not_after"))
            for entry in self._entries()
        )

    def remember(self, der: bytes, leaf: x509.Certificate, pin: ProxyPin) -> None:
        digest, now = hashlib.sha256(der).hexdigest(), time.time()
        kept = [
            entry
            for entry in self._entries()
            if entry.get("sha256") != digest and _number(entry.get("not_after")) > now
        ]
        kept.append(
            {
                "sha256": digest,
                "pin": _pin_id(pin),
                "not_before": leaf.not_valid_before_utc.timestamp(),
                "not_after": leaf.not_valid_after_utc.timestamp(),
            }
        )
        with contextlib.suppress(OSError):  # not written: the full check next time
            write_atomic(self.path, json.dumps(kept[-VERIFIED_LEAVES:]))

    def _entries(self) -> list[dict[str, Any]]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(entries, list):
            return []
        return [entry for entry in entries if isinstance(entry, dict)]


def _pin_id(pin: ProxyPin) -> str:
    return hashlib.sha256(json.dumps(pin.to_dict(), sort_keys=True).encode()).hexdigest()


def _number(value: Any) -> float:
    """A stored time, or NaN (never within a validity window) when it is not one."""
    return float(value) if isinstance(value, int | float) else float("nan")


@dataclass
class PinCheck:
    """Checks the proxy's leaf certificate during each handshake; keeps what it saw."""

    proxy: str
    pin: ProxyPin | None  # None: accept anything (first contact with --insecure)
    seen: x509.Certificate | None = None
    failure: CertgateError | None = field(default=None)
    # Certificates this pin accepted before (None: check every one in full).
    verified: VerifiedLeaves | None = None

    def check(self, der: bytes | None) -> None:
        if der is None:
            self._fail("the proxy presented no certificate")
        pin = self.pin
        if pin is not None and pin.kind == "public":
            return  # the ssl module verified it (chain and name) already
        if pin is not None and self.verified is not None and self.verified.vouch(der, pin):
            return
        from cryptography import x509

        leaf = x509.load_der_x509_certificate(der)
        self.seen = leaf
        if pin is None:
            return  # first contact (--insecure): what was seen is pinned by the caller
        if (pin.kind == "spki" and spki_pin(leaf) == pin.sha256) or (
            pin.kind == "ca" and _is_proxy_cert_under(leaf, pin.ca_pem)
        ):
            if self.verified is not None:
                self.verified.remember(der, leaf, pin)
            return
        self._fail(
            f"the proxy at {self.proxy} presents a different certificate than at your first "
            f"login: expected {pin.describe()}, got certificate key {spki_pin(leaf)} "
            f"(issuer {leaf.issuer.rfc4514_string() or '-'}). Someone may be intercepting "
            "the connection. If the proxy was rebuilt or its certificate replaced, run "
            "`cgsh logout` then `cgsh login --insecure` to trust the new one"
        )

    def _fail(self, message: str) -> NoReturn:
        self.failure = ProxyCertificateChanged(message)
        raise ssl.SSLCertVerificationError(message)


def _is_proxy_cert_under(leaf: x509.Certificate, ca_pem: str) -> bool:
    """Issued by the pinned CA, valid now, and a proxy's own (not another host's)."""
    from cryptography import x509

    from certgate.api.certs import identity_from_x509

    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        leaf.verify_directly_issued_by(ca)
        now = datetime.now(UTC)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            return False
        # Every joined host holds a certificate from the same host CA: only the
        # proxy's own role may stand in for the proxy.
        return SYSTEM_PROXY in identity_from_x509(leaf).roles
    except (ValueError, TypeError, CertgateError):
        return False


def proxy_context(
    check: PinCheck,
    cert_pem: str | None = None,
    key_pem: str | None = None,
) -> ssl.SSLContext:
    """A client context for the proxy that runs `check` inside every handshake."""
    pin = check.pin
    # Public: the system's roots and the host name, as any HTTPS client. Otherwise the
    # pin decides, so OpenSSL only proves the proxy holds the leaf's key.
    public = pin is not None and pin.kind == "public"
    context = client_context(cert_pem=cert_pem, key_pem=key_pem, insecure=not public)

    class _PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check.check(self.getpeercert(binary_form=True))

    context.sslsocket_class = _PinnedSocket
    return context


def first_pin(leaf: x509.Certificate, host_cas: list[str]) -> ProxyPin:
    """The pin to save after a first login with --insecure, from the certificate seen."""
    for ca_pem in host_cas[:1]:  # the bundle lists the host CA first
        if _is_proxy_cert_under(leaf, ca_pem):
            return ProxyPin("ca", spki_pin_of_pem(ca_pem), ca_pem)
    return ProxyPin("spki", spki_pin(leaf))
