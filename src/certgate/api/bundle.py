"""What a login, a renewal or a join hands to the key's owner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from certgate.api.identity import Identity


@dataclass(frozen=True)
class CertBundle:
    identity: Identity
    ssh_cert: str
    tls_cert: str
    # The cluster's TLS CAs (host first, then user), PEM: servers are verified against
    # the host CA; the user CA is what kubeconfigs and proxies trust for users.
    tls_cas: list[str]
    # `@cert-authority * ...` line for known_hosts.
    known_hosts: str
    # OpenSSH public keys of the user CA (what sshd's TrustedUserCAKeys holds).
    user_ca_keys: list[str]
    # What the user's roles grant in Kubernetes clusters, all clusters together, when
    # issued (`cgsh status` shows it). For display: each call is decided by the kube
    # service from the roles as they are then, per cluster (kubernetes_labels).
    kubernetes_groups: list[str] = field(default_factory=list)
    kubernetes_users: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity.to_dict(),
            "ssh_cert": self.ssh_cert,
            "tls_cert": self.tls_cert,
            "tls_cas": self.tls_cas,
            "known_hosts": self.known_hosts,
            "user_ca_keys": self.user_ca_keys,
            "kubernetes_groups": self.kubernetes_groups,
            "kubernetes_users": self.kubernetes_users,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CertBundle:
        return cls(
            identity=Identity.from_dict(data["identity"]),
            ssh_cert=str(data["ssh_cert"]),
            tls_cert=str(data["tls_cert"]),
            tls_cas=[str(c) for c in data["tls_cas"]],
            known_hosts=str(data["known_hosts"]),
            user_ca_keys=[str(k) for k in data["user_ca_keys"]],
            # Absent from bundles saved by an older cgsh.
            kubernetes_groups=[str(g) for g in data.get("kubernetes_groups", [])],
            kubernetes_users=[str(u) for u in data.get("kubernetes_users", [])],
        )
