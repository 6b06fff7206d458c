"""Typed look-ups of stored resources for the command line: names and existence."""

from __future__ import annotations

from typing import Any

from certgate.client.cluster import ClusterAPI
from certgate.client.names import did_you_mean, resolve_prefix
from certgate.errors import NotFound


def names(cluster: ClusterAPI, kind: str) -> list[str]:
    items: list[dict[str, Any]] = cluster.call("GET", f"/resources/{kind}")
    return [item["metadata"]["name"] for item in items]


def require(cluster: ClusterAPI, kind: str, name: str) -> None:
    """NotFound (with the nearest name as a hint) unless `kind/name` exists. `name`
    must have passed the name rules (api/names.py): it becomes part of a URL path."""
    try:
        cluster.call("GET", f"/resources/{kind}/{name}")
        return
    except NotFound:
        pass
    hint = did_you_mean(names(cluster, kind), name)
    raise NotFound(f'{kind.replace("_", " ")} "{name}" not found{hint}')


def resolve(cluster: ClusterAPI, kind: str, prefix: str) -> str:
    """The full name of the `kind` whose name starts with `prefix` (ids as git takes them)."""
    return resolve_prefix(names(cluster, kind), prefix, kind.replace("_", " "))
