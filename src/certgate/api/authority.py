"""Certificate authorities. Private keys live only in the store, never in API answers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from certgate.api.meta import Metadata, Model

CAType = Literal["user_ssh", "host_ssh", "user_tls", "host_tls"]
CA_TYPES: tuple[CAType, ...] = ("user_ssh", "host_ssh", "user_tls", "host_tls")


class CAKeyPair(Model):
    # SSH: the public key in OpenSSH format; TLS: the self-signed CA certificate, PEM.
    public: str
    # PEM (PKCS#8). Empty in everything that leaves auth.
    private: str = ""


class CertAuthoritySpec(Model):
    type: CAType
    cluster_name: str
    active_keys: list[CAKeyPair] = Field(min_length=1)


class CertAuthority(Model):
    """metadata.name is the CA type."""

    kind: Literal["cert_authority"] = "cert_authority"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: CertAuthoritySpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def without_secrets(self) -> CertAuthority:
        keys = [key.model_copy(update={"private": ""}) for key in self.spec.active_keys]
        return self.model_copy(update={"spec": self.spec.model_copy(update={"active_keys": keys})})
