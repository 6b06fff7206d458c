"""Sending audit events from proxies and nodes to auth, which stores them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from certgate.errors import CertgateError
from certgate.rpc.auth_client import AsyncAuthClient

log = logging.getLogger("certgate.audit")


class AuditSink(Protocol):
    async def __call__(self, event: str, **fields: Any) -> None: ...


class RemoteAudit:
    """An AuditSink that posts to auth; a failure is logged, never raised to a session."""

    def __init__(self, client: AsyncAuthClient) -> None:
        self._client = client

    async def __call__(self, event: str, **fields: Any) -> None:
        try:
            await self._client.call("POST", "/v1/events", json={"event": event, "fields": fields})
        except CertgateError as exc:
            log.warning("audit event %s not delivered: %s %s", event, exc, fields)

    async def many(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Several events in one call, stored in this order."""
        body = {"events": [{"event": event, "fields": fields} for event, fields in events]}
        try:
            await self._client.call("POST", "/v1/events", json=body)
        except CertgateError as exc:
            kinds = ", ".join(sorted({event for event, _ in events}))
            log.warning("%d audit events (%s) not delivered: %s", len(events), kinds, exc)
