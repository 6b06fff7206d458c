"""Who a certificate speaks for, and how that is written into SSH and X.509 certificates.

An identity travels inside both certificates so every service decides without a round
trip to auth (DESIGN §2):

- SSH: key id = username, principals = logins, and the extensions
  `roles@certgate`, `traits@certgate`, `request-ids@certgate`, `resources@certgate`
  (JSON text).
- X.509: CN = username, O = roles, and the private extension `IDENTITY_OID` carrying
  `Identity.to_json()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# An unregistered private arc. Not 2.25.<uuid> (what certificates carried first): Go's
# x509 parser, and so kubectl, refuses a certificate with any OID arc above 2^31-1
# ("x509: malformed extension OID field"), and kubectl must load the user's certificate.
IDENTITY_OID = "1.3.9999.7919.1"
# Still read, so certificates issued before the change keep working until they expire.
LEGACY_IDENTITY_OID = "2.25.173504339218574283719734591186622512370"

SSH_EXT_ROLES = "roles@certgate"
SSH_EXT_TRAITS = "traits@certgate"
SSH_EXT_REQUESTS = "request-ids@certgate"
SSH_EXT_MFA = "mfa-verified@certgate"
# Set only by resource access requests: the one resources ("node/db-1") the holder may
# reach; an identity without it is not limited to named resources.
SSH_EXT_RESOURCES = "resources@certgate"

# Built-in roles of service identities and of the auth host's admin identity. They are
# honoured only on identities whose `kind` is "service", so a user role that happens to
# bear one of these names grants nothing extra.
SYSTEM_ADMIN = "Admin"
SYSTEM_PROXY = "Proxy"
SYSTEM_NODE = "Node"
SYSTEM_KUBE = "Kube"
SYSTEM_ROLES = (SYSTEM_ADMIN, SYSTEM_PROXY, SYSTEM_NODE, SYSTEM_KUBE)


@dataclass(frozen=True)
class Identity:
    """What a certificate says about its holder.

    `kind` is "user" for people and bots, "service" for hosts that joined the cluster
    (their `roles` are then system roles such as "Node").
    """

    username: str
    roles: tuple[str, ...] = ()
    traits: dict[str, list[str]] = field(default_factory=dict)
    logins: tuple[str, ...] = ()
    request_ids: tuple[str, ...] = ()
    # Granted by resource access requests: only these ("node/db-1") may be reached.
    resources: tuple[str, ...] = ()
    expires: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    mfa_verified: bool = False
    kind: str = "user"
    # When the certificate was issued, as it says (SSH valid_after, X.509 notBefore:
    # whole seconds, a minute before the actual signing for clock skew). Locks that cut
    # a user's older certificates compare against it; None when not known.
    issued: datetime | None = None

    def is_service(self, system_role: str | None = None) -> bool:
        if self.kind != "service":
            return False
        return system_role is None or system_role in self.roles

    def to_json(self) -> str:
        """The JSON carried in the X.509 identity extension (and in API answers)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "roles": list(self.roles),
            "traits": self.traits,
            "logins": list(self.logins),
            "request_ids": list(self.request_ids),
            "resources": list(self.resources),
            "expires": self.expires.isoformat(),
            "mfa_verified": self.mfa_verified,
            "kind": self.kind,
            "issued": self.issued.isoformat() if self.issued else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        return cls(
            username=str(data["username"]),
            roles=tuple(data.get("roles", ())),
            traits={str(k): [str(v) for v in vs] for k, vs in data.get("traits", {}).items()},
            logins=tuple(data.get("logins", ())),
            request_ids=tuple(data.get("request_ids", ())),
            resources=tuple(str(r) for r in data.get("resources", ())),
            expires=datetime.fromisoformat(data["expires"]),
            mfa_verified=bool(data.get("mfa_verified", False)),
            kind=str(data.get("kind", "user")),
            issued=datetime.fromisoformat(data["issued"]) if data.get("issued") else None,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Identity:
        return cls.from_dict(json.loads(text))
