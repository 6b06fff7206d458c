"""A stand-in for the watch-fed ResourceView that CachedAccess reads, for in-process
servers: tests put roles, locks and nodes in it, and make it fall silent."""

from __future__ import annotations

from typing import Any


class StubView:
    def __init__(self, items: dict[str, dict[str, Any]]) -> None:
        self.items = items
        # Seconds since auth was last heard from; raise it to make the view stale.
        self.silence = 0.0
        # Whether the watch is up: nodes' expiry then comes from the store's deletes.
        self.connected = False

    def get(self, kind: str, name: str) -> Any:
        return self.items.get(kind, {}).get(name)

    def all(self, kind: str) -> list[Any]:
        return list(self.items.get(kind, {}).values())

    def seconds_since_contact(self) -> float:
        return self.silence
