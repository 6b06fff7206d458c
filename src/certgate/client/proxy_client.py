"""The HTTPS connection to the proxy, with the profile's pin and the user's certificate.

A failure is explained before it is reported: a changed proxy certificate names both
fingerprints (proxy_trust.PinCheck); a connection the proxy drops because of the user's
own certificate (expired, or signed by a CA the cluster no longer trusts) says so, found
by asking the same proxy again without a certificate. Only what is left is a network
problem.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, BinaryIO

import httpx

from certgate.client.expiry import expired_message
from certgate.client.profile import CertificateExpired, Profile
from certgate.client.proxy_trust import PinCheck, ProxyPin, VerifiedLeaves, proxy_context
from certgate.errors import AccessDenied, CertgateError, ConnectionProblem
from certgate.rpc.auth_client import AuthClient
from certgate.rpc.identity_files import IdentityFiles

# In the profile's keys directory: the proxy certificates its pin accepted.
PROXY_CERTS_FILE = "proxy_certs.json"


class CertificateRefused(AccessDenied):
    """The proxy refused the user's certificate during the TLS handshake."""


class ProxyClient(AuthClient):
    """AuthClient to the proxy whose errors say what went wrong with the certificates."""

    def __init__(
        self,
        proxy: str,
        pin: ProxyPin | None,
        identity: IdentityFiles | None = None,
        verified: VerifiedLeaves | None = None,
    ) -> None:
        self.proxy = proxy
        self.check = PinCheck(proxy, pin, verified=verified)
        self._identity = identity
        cert = identity.bundle.tls_cert if identity else None
        key = identity.key_pem if identity else None
        super().__init__(f"https://{proxy}", proxy_context(self.check, cert, key))

    def call(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        try:
            return super().call(method, path, json=json, params=params)
        except ConnectionProblem as exc:
            raise self._explain(exc) from exc

    def download(self, path: str, out: BinaryIO, params: Any = None) -> int:
        try:
            return super().download(path, out, params=params)
        except ConnectionProblem as exc:
            raise self._explain(exc) from exc

    def _explain(self, problem: ConnectionProblem) -> CertgateError:
        if self.check.failure is not None:
            return self.check.failure
        if self._identity is None or not isinstance(problem.__cause__, httpx.HTTPError):
            return problem  # no certificate of ours, or an answer (a node is down)
        if isinstance(problem.__cause__, httpx.TimeoutException):
            # Slow is not refused: a busy proxy (its handshakes queued behind thousands of
            # others) answered a later ping and this was taken for a refusal.
            return problem
        expires = self._identity.bundle.identity.expires
        if expires <= datetime.now(UTC):
            return CertificateExpired(expired_message(expires))
        if not self._refused_without_reason():
            return problem
        return CertificateRefused(
            f"the proxy at {self.proxy} refused your certificate (valid until "
            f"{expires:%Y-%m-%d %H:%M:%S %Z} by this machine's clock): it expired by the "
            "cluster's clock or its CA is no longer trusted: run cgsh login"
        )

    def _refused_without_reason(self) -> bool:
        """Does the proxy answer the same pinned connection without our certificate?"""
        bare = ProxyClient(self.proxy, self.check.pin)
        try:
            bare.call("GET", "/v1/ping")
        except CertgateError:
            return False  # it is down or changed: the original problem stands
        finally:
            bare.close()
        return True


def connect_proxy(profile: Profile) -> ProxyClient:
    """The profile's client, refused before dialling when its certificate expired."""
    identity = profile.valid_identity()
    verified = VerifiedLeaves(profile.keys_dir / PROXY_CERTS_FILE)
    return ProxyClient(profile.proxy, profile.pin, identity, verified)
