"""Sending audit events from proxies, nodes and kube services to auth, which stores them.

`post_events` is the delivery the durable spool (rpc/audit_spool.py) uses: one call per
batch, raising if auth did not store it (the spool keeps the batch and retries).
`SpoolSink` lets code that awaits a sink callable (the proxy's jump host) put its events
in the spool instead.
"""

from __future__ import annotations

from typing import Any, Protocol

from certgate.rpc.audit_spool import AuditSpool, BatchSender
from certgate.rpc.auth_client import AsyncAuthClient


class AuditSink(Protocol):
    async def __call__(self, event: str, **fields: Any) -> None: ...


def post_events(client: AsyncAuthClient) -> BatchSender:
    """A BatchSender that posts to auth's POST /v1/events (stored in order, or raises)."""

    async def send(records: list[dict[str, Any]]) -> None:
        await client.call("POST", "/v1/events", json={"events": records})

    return send


class SpoolSink:
    """An AuditSink that puts each event in a spool and returns at once."""

    def __init__(self, writer: AuditSpool) -> None:
        self._writer = writer

    async def __call__(self, event: str, **fields: Any) -> None:
        self._writer.put(event, fields)
