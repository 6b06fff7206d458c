"""Who has access to what, and recent activity, for cgctl (and scripts): a typed client
over `GET /v1/access` and `GET /v1/activity`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from certgate.client.cluster import ClusterAPI


@dataclass(frozen=True)
class AccessEntry:
    """One row of the access matrix: may `user` log in to `node` as `login` now, and how."""

    user: str
    node: str
    hostname: str
    login: str
    allowed: bool
    how: str  # standing | request | locked | denied
    request_id: str
    until: str | None
    lock: str
    allowed_by: list[str]
    denied_by: list[str]
    reason: str
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccessEntry:
        return cls(
            user=data["user"],
            node=data["node"],
            hostname=data.get("hostname", ""),
            login=data["login"],
            allowed=bool(data["allowed"]),
            how=data["how"],
            request_id=data.get("request_id", ""),
            until=data.get("until"),
            lock=data.get("lock", ""),
            allowed_by=[g["role"] for g in data.get("allowed_by", [])],
            denied_by=list(data.get("denied_by", [])),
            reason=data.get("reason", ""),
            raw=data,
        )

    def describe_how(self) -> str:
        """standing / request ID until T / locked by L / denied by R."""
        if self.how == "request":
            return f"request {self.request_id}" + (
                f" until {_utc(self.until)}" if self.until else ""
            )
        if self.how == "locked":
            return f"locked by {self.lock}"
        if self.how == "denied":
            return f"denied by {', '.join(self.denied_by)}"
        return self.how


@dataclass(frozen=True)
class Activity:
    days: list[str]
    series: dict[str, list[int]]


class AccessClient:
    def __init__(self, api: ClusterAPI) -> None:
        self._api = api

    def list(
        self,
        user: str = "",
        node: str = "",
        role: str = "",
        labels: Sequence[str] = (),
    ) -> list[AccessEntry]:
        params: list[tuple[str, str]] = [
            (k, v) for k, v in (("user", user), ("node", node), ("role", role)) if v
        ]
        params += [("label", text) for text in labels]
        result = self._api.call("GET", "/access", params=params)
        return [AccessEntry.from_dict(row) for row in result["rows"]]

    def activity(self, days: int = 7) -> Activity:
        result = self._api.call("GET", "/activity", params={"days": str(days)})
        return Activity(days=list(result["days"]), series=dict(result["series"]))


def _utc(text: str) -> str:
    """An RFC 3339 time from the API as `2026-11-30T14:00:00Z` (whole seconds, UTC)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        return text
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
