"""Picks the storage implementations named in the config.

The only place that names an implementation: daemons call `open_backend` and
`open_event_store` with the `storage` section of their config and get the seam types
back.

    storage:
      type: sqlite            # the default: files in the data directory
      path: backend.db        # optional, relative to the data directory
      poll_interval: 0.05     # optional, seconds between checks for other processes' writes

    storage:
      type: postgres          # several auth processes on several hosts share one store
      conn_string: "postgresql://certgate@db.example.com:5432/certgate"
      tls: {ca_file: "", cert_file: "", key_file: "", mode: ""}   # libpq sslrootcert, ...
      poll_interval: 1.0      # optional: the longest a lost NOTIFY can delay a watch event
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certgate.backend.base import Backend
from certgate.backend.events import EventStore
from certgate.backend.events_sqlite import SQLiteEventStore
from certgate.backend.sqlite import SQLiteBackend
from certgate.clock import Clock
from certgate.errors import BadParameter

# Connections per auth process to a postgres store (`storage.pool_size`).
DEFAULT_POOL_SIZE = 10


async def open_backend(
    storage: dict[str, Any], data_dir: Path, clock: Clock | None = None
) -> Backend:
    """Open the key-value backend that `storage` names."""
    kind = _check_type(storage)
    if kind == "postgres":
        # Imported only when named: an SQLite cluster never loads psycopg.
        from certgate.backend.postgres import PostgresBackend

        poll_interval = _number(storage, "poll_interval", 1.0)
        pool_size = int(_number(storage, "pool_size", DEFAULT_POOL_SIZE))
        return await PostgresBackend.open(
            _conninfo(storage), clock, poll_interval, pool_size=pool_size
        )
    path = _path(storage.get("path", "backend.db"), data_dir)
    poll_interval = _number(storage, "poll_interval", 0.05)
    return await SQLiteBackend.open(path, clock=clock, poll_interval=poll_interval)


async def open_event_store(storage: dict[str, Any], data_dir: Path) -> EventStore:
    """Open the audit event store that `storage` names (data_dir/events.db for sqlite)."""
    if _check_type(storage) == "postgres":
        from certgate.backend.events_postgres import PostgresEventStore

        return await PostgresEventStore.open(_conninfo(storage))
    return await SQLiteEventStore.open(data_dir / "events.db")


def _check_type(storage: dict[str, Any]) -> str:
    kind = storage.get("type", "sqlite")
    if kind not in ("sqlite", "postgres"):
        raise BadParameter(f'unknown storage type "{kind}": use "sqlite" or "postgres"')
    return str(kind)


def _conninfo(storage: dict[str, Any]) -> str:
    from certgate.backend.postgres import postgres_conninfo

    tls = storage.get("tls") or {}
    if not isinstance(tls, dict):
        raise BadParameter("storage tls must be a mapping of ca_file, cert_file, key_file, mode")
    conn_string = storage.get("conn_string", "")
    if not isinstance(conn_string, str):
        raise BadParameter("storage conn_string must be a string")
    return postgres_conninfo(
        conn_string,
        ca_file=str(tls.get("ca_file") or ""),
        cert_file=str(tls.get("cert_file") or ""),
        key_file=str(tls.get("key_file") or ""),
        mode=str(tls.get("mode") or ""),
    )


def _number(storage: dict[str, Any], name: str, default: float) -> float:
    value = storage.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise BadParameter(f"storage {name} must be a positive number, got {value!r}")
    return float(value)


def _path(value: object, data_dir: Path) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise BadParameter(f"storage path must be a file name, got {value!r}")
    return data_dir / value  # an absolute value replaces data_dir
