"""A private key and its certificates, kept in a directory (mode 0700).

Used for the identities services keep in their data dir (`<data_dir>/identity/<role>`),
for the auth host's admin identity (`<data_dir>/admin`), which `cgctl` on that host
uses, and under the user's profile.

    key.pem       private key (PKCS#8, 0600)          bundle.json   certs + CAs + identity
    key           the same key in OpenSSH format      key-cert.pub  SSH certificate
    tls.crt       X.509 certificate                   cas.pem       the cluster's TLS CAs
    known_hosts   `@cert-authority` line of the host CA
    auth_addr     where auth listens (admin identity only)
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from certgate.api.bundle import CertBundle
from certgate.atomic_files import write_atomic
from certgate.errors import BadParameter, NotFound
from certgate.transport import client_context

# cryptography is imported by the functions that use a key: loading an identity only
# reads files, and `cgsh status` (which only loads one) should not pay for it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class IdentityFiles:
    key_pem: str
    bundle: CertBundle

    def public_key(self) -> str:
        from certgate.api.certs import public_key_openssh

        return public_key_openssh(_private_key(self.key_pem))

    def tls_context(self, insecure: bool = False) -> ssl.SSLContext:
        """mTLS client context: presents this identity, trusts the cluster's CAs."""
        return client_context(
            self.bundle.tls_cas, self.bundle.tls_cert, self.key_pem, insecure=insecure
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        from certgate.api.certs import private_key_to_openssh, public_key_openssh

        key = _private_key(self.key_pem)
        write_atomic(directory / "key.pem", self.key_pem.encode(), 0o600)
        write_atomic(directory / "key", private_key_to_openssh(key), 0o600)
        write_atomic(directory / "key.pub", (public_key_openssh(key) + "\n").encode(), 0o644)
        write_atomic(
            directory / "key-cert.pub", (self.bundle.ssh_cert.strip() + "\n").encode(), 0o644
        )
        write_atomic(directory / "tls.crt", self.bundle.tls_cert.encode(), 0o644)
        write_atomic(directory / "cas.pem", "".join(self.bundle.tls_cas).encode(), 0o644)
        write_atomic(
            directory / "known_hosts", (self.bundle.known_hosts.strip() + "\n").encode(), 0o644
        )
        write_atomic(
            directory / "bundle.json", json.dumps(self.bundle.to_dict(), indent=2).encode(), 0o600
        )

    @classmethod
    def load(cls, directory: Path) -> IdentityFiles:
        try:
            key_pem = (directory / "key.pem").read_text()
            data = json.loads((directory / "bundle.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"no identity in {directory}") from None
        except (OSError, ValueError) as exc:
            raise BadParameter(f"cannot read the identity in {directory}: {exc}") from exc
        return cls(key_pem=key_pem, bundle=CertBundle.from_dict(data))


def _private_key(key_pem: str) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def new_key() -> tuple[str, str]:
    """A fresh private key (PEM) and its OpenSSH public key."""
    from certgate.api.certs import generate_private_key, private_key_to_pem, public_key_openssh

    key = generate_private_key()
    return private_key_to_pem(key).decode(), public_key_openssh(key)
