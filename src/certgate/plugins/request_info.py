"""What a plugin knows of an access request: the fields messages show, read from the
resource document (`spec` as docs/access-requests.md describes it).

Plugins depend on this small, stable shape rather than on the stored model, so the
webhook's JSON (docs/plugins.md) stays the same when the resource grows a field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from certgate.api.duration import format_duration, parse_duration
from certgate.errors import BadParameter

PENDING = "PENDING"
APPROVED = "APPROVED"
DENIED = "DENIED"
EXPIRED = "EXPIRED"
RESOLVED = (APPROVED, DENIED, EXPIRED)


@dataclass(frozen=True)
class Review:
    author: str
    verdict: str  # approve | deny
    reason: str = ""
    created: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "author": self.author,
            "verdict": self.verdict,
            "reason": self.reason,
            "created": _iso(self.created),
        }


@dataclass(frozen=True)
class RequestInfo:
    id: str
    user: str
    state: str
    roles: tuple[str, ...] = ()
    resources: tuple[tuple[str, str], ...] = ()  # (kind, name)
    reason: str = ""
    suggested_reviewers: tuple[str, ...] = ()
    created: datetime | None = None
    pending_expires: datetime | None = None
    max_duration: timedelta | None = None
    access_expires: datetime | None = None
    reviews: tuple[Review, ...] = field(default_factory=tuple)
    resolve_reason: str = ""

    @property
    def resolved(self) -> bool:
        return self.state in RESOLVED

    def access_ends(self) -> datetime | None:
        """When the access ends: as granted, or as it would if approved on creation."""
        if self.access_expires is not None:
            return self.access_expires
        if self.created is not None and self.max_duration is not None:
            return self.created + self.max_duration
        return None

    def what(self) -> str:
        """`roles kube-admin` / `node/db-1` / both: what the request asks for."""
        parts = []
        if self.roles:
            parts.append("roles " + ", ".join(self.roles))
        if self.resources:
            parts.append(", ".join(f"{kind}/{name}" for kind, name in self.resources))
        return " and ".join(parts) or "nothing"

    def to_json(self) -> dict[str, Any]:
        """The request as the webhook sends it and the state file keeps it."""
        return {
            "id": self.id,
            "user": self.user,
            "state": self.state,
            "roles": list(self.roles),
            "resources": [{"kind": k, "name": n} for k, n in self.resources],
            "reason": self.reason,
            "suggested_reviewers": list(self.suggested_reviewers),
            "created": _iso(self.created),
            "pending_expires": _iso(self.pending_expires),
            "max_duration": format_duration(self.max_duration) if self.max_duration else None,
            "access_expires": _iso(self.access_expires),
            "reviews": [r.to_json() for r in self.reviews],
            "resolve_reason": self.resolve_reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestInfo:
        """Back from `to_json` (the state file's copy)."""
        return cls.from_spec(str(data["id"]), data)

    @classmethod
    def from_resource(cls, document: dict[str, Any]) -> RequestInfo:
        """From an `access_request` resource document (a watch event)."""
        try:
            name = str(document["metadata"]["name"])
            spec = document["spec"]
        except (KeyError, TypeError) as exc:
            raise BadParameter("an access request needs metadata.name and spec") from exc
        if not isinstance(spec, dict):
            raise BadParameter("an access request's spec must be a mapping")
        return cls.from_spec(name, spec)

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> RequestInfo:
        try:
            return cls(
                id=name,
                user=str(spec["user"]),
                state=str(spec.get("state") or PENDING).upper(),
                roles=tuple(str(r) for r in spec.get("roles") or ()),
                resources=tuple(
                    (str(r["kind"]), str(r["name"])) for r in spec.get("resources") or ()
                ),
                reason=str(spec.get("reason") or ""),
                suggested_reviewers=tuple(str(u) for u in spec.get("suggested_reviewers") or ()),
                created=_time(spec.get("created")),
                pending_expires=_time(spec.get("pending_expires")),
                max_duration=_duration(spec.get("max_duration")),
                access_expires=_time(spec.get("access_expires")),
                reviews=tuple(
                    Review(
                        author=str(r["author"]),
                        verdict=str(r["verdict"]),
                        reason=str(r.get("reason") or ""),
                        created=_time(r.get("created")),
                    )
                    for r in spec.get("reviews") or ()
                ),
                resolve_reason=str(spec.get("resolve_reason") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadParameter(f"access request {name}: unreadable field: {exc}") from exc


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _duration(value: Any) -> timedelta | None:
    if value is None or value == "":
        return None
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return parse_duration(str(value))
