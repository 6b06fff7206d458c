"""Who has access to what, and recent activity, for cgctl (and scripts): a typed client
over `GET /v1/access` (read a page at a time) and `GET /v1/activity`."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from certgate.client.cluster import ClusterAPI


@dataclass(frozen=True)
class AccessEntry:
    """One row of the access matrix: may `user` reach a node as `login` (kind "node"),
    or a Kubernetes cluster as `kubernetes_groups`/`kubernetes_users` (kind
    "kube_cluster") now, and how. `name` is the node's or the cluster's."""

    kind: str  # node | kube_cluster
    user: str
    name: str
    hostname: str
    login: str
    kubernetes_groups: list[str]
    kubernetes_users: list[str]
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
        kind = data.get("kind", "node")
        return cls(
            kind=kind,
            user=data["user"],
            name=data["kube_cluster"] if kind == "kube_cluster" else data["node"],
            hostname=data.get("hostname", ""),
            login=data.get("login", ""),
            kubernetes_groups=list(data.get("kubernetes_groups", [])),
            kubernetes_users=list(data.get("kubernetes_users", [])),
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

    @property
    def node(self) -> str:
        return self.name if self.kind == "node" else ""

    def describe_as(self) -> str:
        """The login, or the groups and users kubectl acts as in the cluster."""
        if self.kind == "node":
            return self.login
        parts = [f"groups {','.join(self.kubernetes_groups)}"] if self.kubernetes_groups else []
        if self.kubernetes_users:
            parts.append(f"users {','.join(self.kubernetes_users)}")
        return " ".join(parts) or "-"

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


# Rows per request: each answer stays small and quick however large the matrix is.
PAGE = 1000


class AccessClient:
    def __init__(self, api: ClusterAPI) -> None:
        self._api = api

    def list(
        self,
        user: str = "",
        node: str = "",
        role: str = "",
        labels: Sequence[str] = (),
        kube_cluster: str = "",
        kind: str = "",
    ) -> list[AccessEntry]:
        """Every row that matches, read from auth a page at a time."""
        params: list[tuple[str, str]] = [
            (k, v)
            for k, v in (
                ("user", user),
                ("node", node),
                ("kube_cluster", kube_cluster),
                ("kind", kind),
                ("role", role),
            )
            if v
        ]
        params += [("label", text) for text in labels]
        return list(self._pages(params))

    def page(
        self, params: Sequence[tuple[str, str]], limit: int, start_key: str = ""
    ) -> tuple[builtins.list[AccessEntry], str]:
        """One page of rows and the `start_key` of the next ("" after the last)."""
        query = [*params, ("limit", str(limit))]
        if start_key:
            query.append(("start_key", start_key))
        result = self._api.call("GET", "/access", params=query)
        return [AccessEntry.from_dict(row) for row in result["rows"]], result.get("next_key", "")

    def _pages(self, params: Sequence[tuple[str, str]]) -> Iterator[AccessEntry]:
        key = ""
        while True:
            rows, key = self.page(params, PAGE, key)
            yield from rows
            if not key:
                return

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
