"""Picks the storage implementations named in the config.

The only place that names an implementation: daemons call `open_backend` and
`open_event_store` with the `storage` section of their config and get the seam types
back.

    storage:
      type: sqlite            # default; "postgres" is planned
      path: backend.db        # optional, relative to the data directory
      poll_interval: 0.05     # optional, seconds between checks for other processes' writes
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certgate.backend.base import Backend
from certgate.backend.events_sqlite import SQLiteEventStore
from certgate.backend.sqlite import SQLiteBackend
from certgate.clock import Clock
from certgate.errors import BadParameter


async def open_backend(
    storage: dict[str, Any], data_dir: Path, clock: Clock | None = None
) -> Backend:
    """Open the key-value backend that `storage` names."""
    _check_type(storage)
    path = _path(storage.get("path", "backend.db"), data_dir)
    poll_interval = storage.get("poll_interval", 0.05)
    if not isinstance(poll_interval, int | float) or isinstance(poll_interval, bool):
        raise BadParameter(f"storage poll_interval must be a number, got {poll_interval!r}")
    return await SQLiteBackend.open(path, clock=clock, poll_interval=float(poll_interval))


async def open_event_store(storage: dict[str, Any], data_dir: Path) -> SQLiteEventStore:
    """Open the audit event store that `storage` names (data_dir/events.db for sqlite)."""
    _check_type(storage)
    return await SQLiteEventStore.open(data_dir / "events.db")


def _check_type(storage: dict[str, Any]) -> None:
    """Refuse every storage type but sqlite, the only one built so far."""
    kind = storage.get("type", "sqlite")
    if kind == "sqlite":
        return
    if kind == "postgres":
        raise BadParameter('storage type "postgres" is not available yet')
    raise BadParameter(f'unknown storage type "{kind}": use "sqlite"')


def _path(value: object, data_dir: Path) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise BadParameter(f"storage path must be a file name, got {value!r}")
    return data_dir / value  # an absolute value replaces data_dir
