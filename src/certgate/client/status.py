"""What `cgctl status` reports: the cluster, its CAs and how much is in it.

    cluster_status(api) -> ClusterStatus     (ping, cert_authority, counts of resources)

SSH CAs are shown by their OpenSSH fingerprint (`SHA256:...`, what `ssh-keygen -l`
prints); TLS CAs by their pin (`sha256:<hex of the SPKI>`, what `--ca-pin` takes).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from certgate.client.cluster import ClusterAPI
from certgate.rpc.join import pin_of


@dataclass(frozen=True)
class AuthorityKey:
    type: str
    fingerprint: str


@dataclass(frozen=True)
class ClusterStatus:
    cluster_name: str
    version: str
    proxy_addr: str
    authorities: list[AuthorityKey] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "cluster_name": self.cluster_name,
            "version": self.version,
            "proxy_addr": self.proxy_addr,
            "authorities": [
                {"type": a.type, "fingerprint": a.fingerprint} for a in self.authorities
            ],
            "counts": self.counts,
        }


# What is counted, as shown; each a resource kind but live sessions.
COUNTED = ("nodes", "users", "sessions", "locks")


def cluster_status(api: ClusterAPI) -> ClusterStatus:
    ping: dict[str, Any] = api.call("GET", "/ping")
    authorities = [
        AuthorityKey(ca["metadata"]["name"], fingerprint(ca["metadata"]["name"], key["public"]))
        for ca in api.call("GET", "/resources/cert_authority")
        for key in ca["spec"]["active_keys"]
    ]
    counts = {
        "nodes": len(api.call("GET", "/resources/node")),
        "users": len(api.call("GET", "/resources/user")),
        "sessions": len(api.call("GET", "/sessions") or []),
        "locks": len(api.call("GET", "/resources/lock")),
    }
    return ClusterStatus(
        cluster_name=str(ping.get("cluster_name", "")),
        version=str(ping.get("version", "")),
        proxy_addr=str(ping.get("proxy_public_addr", "")),
        authorities=sorted(authorities, key=lambda a: a.type),
        counts=counts,
    )


def fingerprint(ca_type: str, public: str) -> str:
    if ca_type.endswith("_tls"):
        return pin_of(public)
    blob = base64.b64decode(public.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
