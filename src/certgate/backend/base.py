"""The storage seam: an ordered key-value store with revisions, expiry and watches.

Keys are `/`-separated strings (`/roles/dev`, `/users/alice/secrets`); values are bytes.
Every write gets a new revision from one cluster-wide counter, strictly increasing, so
`watch` can deliver events in order and resume after a given revision.

Code above this module names only `Backend`; `certgate.backend.registry` picks the
implementation from the config.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from certgate.errors import BadParameter


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes
    revision: int = 0
    expires: datetime | None = None


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class Event:
    type: EventType
    # For DELETE, value is empty and revision is the revision of the deletion.
    item: Item


# An instance this far behind its store (seconds_behind) counts as unavailable: its
# /readyz says not ready, and auth refuses heartbeats at once (503) rather than after
# its database pool's timeout, so a service that knows another auth moves to it.
BEHIND_UNAVAILABLE = 10.0


class Backend(Protocol):
    """All methods are coroutines; errors are certgate.errors kinds.

    - get: NotFound if absent or expired.
    - get_many: the items of `keys` that are present and not expired, in the order of
      `keys`, read from one snapshot (a missing key is left out, not an error).
    - create: AlreadyExists if present (and not expired).
    - put: create or overwrite unconditionally.
    - write_many: put every item in one transaction, all or none; with `create_only`,
      AlreadyExists (naming the key) if any is present, and nothing is written. Keys in
      `deletes` are deleted in the same transaction, after the puts: those present and
      not expired (the others are left alone, no error).
    - compare_and_swap: CompareFailed unless the stored revision equals `expected_revision`
      (NotFound if the key is absent).
    - delete: NotFound if absent.
    - range: items whose key starts with `prefix`, ordered by key, expired ones omitted.
    - watch: events for keys under any of `prefixes`, in revision order, starting after
      `start_revision` (0: only events from now on). Items that expire produce DELETE
      events. The iterator ends when the backend is closed.
    - seconds_behind: 0 while this instance's watches follow the store on schedule;
      otherwise how long ago it last read the store through: writes by other instances
      since then (a lock made through another auth) may not have reached its watches.
    - catch_up: read the store through now; False if that did not happen within
      `timeout` (the store is unreachable).
    """

    async def get(self, key: str) -> Item: ...

    async def get_many(self, keys: Sequence[str]) -> list[Item]: ...

    async def create(self, item: Item) -> Item: ...

    async def put(self, item: Item) -> Item: ...

    async def compare_and_swap(self, item: Item, expected_revision: int) -> Item: ...

    async def write_many(
        self, items: Sequence[Item], create_only: bool, deletes: Sequence[str] = ()
    ) -> list[Item]: ...

    async def delete(self, key: str) -> None: ...

    async def delete_range(self, prefix: str) -> int: ...

    async def range(self, prefix: str, limit: int = 0) -> list[Item]: ...

    async def current_revision(self) -> int: ...

    def watch(self, prefixes: Sequence[str], start_revision: int = 0) -> AsyncIterator[Event]: ...

    def seconds_behind(self) -> float: ...

    async def catch_up(self, timeout: float) -> bool: ...

    async def close(self) -> None: ...


# ---- what every implementation checks and computes the same way -------------------


def checked_value(item: Item) -> bytes:
    """`item`'s value as bytes, once the item is checked: BadParameter for an empty key,
    a value that is not bytes, or an expiry without a timezone."""
    if not isinstance(item.key, str) or not item.key:
        raise BadParameter("item key must be a non-empty string")
    if not isinstance(item.value, bytes | bytearray | memoryview):
        raise BadParameter(f"value of {item.key} must be bytes")
    if item.expires is not None and item.expires.tzinfo is None:
        raise BadParameter(f"expiry must carry a timezone, got {item.expires.isoformat()}")
    return bytes(item.value)


def watched_prefixes(prefixes: Sequence[str], start_revision: int) -> tuple[str, ...]:
    """`watch`'s arguments checked (BadParameter), its prefixes as a tuple."""
    if isinstance(prefixes, str):
        raise BadParameter("watch takes a list of prefixes, not one string")
    if not prefixes:
        raise BadParameter('watch needs at least one prefix; "" watches every key')
    if start_revision < 0:
        raise BadParameter(f"start_revision must not be negative, got {start_revision}")
    return tuple(prefixes)


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string that starts with `prefix` (None: none is).

    With it, `key >= prefix AND key < end` is an index range: both stores order keys
    by code point (SQLite's BINARY on UTF-8 text, PostgreSQL's COLLATE "C"), as Python
    does.
    """
    point = ord(prefix[-1]) + 1
    if point > 0x10FFFF:
        return None
    if 0xD800 <= point <= 0xDFFF:  # surrogates are not characters; skip past them
        point = 0xE000
    return prefix[:-1] + chr(point)
