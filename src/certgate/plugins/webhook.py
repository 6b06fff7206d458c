"""Webhook: each change of a request POSTed as a signed JSON event.

    POST <url>
    Content-Type: application/json
    Certgate-Event-Id: <uuid>               the same id when a delivery is retried
    Certgate-Timestamp: <unix seconds>      when this delivery was signed
    Certgate-Signature: v1=<hex>            HMAC-SHA256(secret, "<timestamp>.<body>")

    {"id": "<uuid>", "type": "access_request.created", "time": "...",
     "request": {...}, "review": {...}}     (review: in access_request.reviewed only)

Types: access_request.created, .reviewed, .approved, .denied, .expired. A receiver
verifies the signature over the raw body, refuses a timestamp outside its replay window
(docs/plugins.md: 5 minutes) and drops an event id it has seen.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from certgate.errors import ConnectionProblem
from certgate.plugins.config import PluginConfig
from certgate.plugins.notifier import Posted
from certgate.plugins.request_info import PENDING, RequestInfo, Review
from certgate.plugins.retry import send

EVENT_ID = "Certgate-Event-Id"
TIMESTAMP = "Certgate-Timestamp"
SIGNATURE = "Certgate-Signature"
RECIPIENT = "webhook"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `Certgate-Signature` value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def event_id(request_id: str, kind: str, index: int = 0) -> str:
    """Stable per event, so a receiver can drop a repeat delivery."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"certgate:{request_id}:{kind}:{index}"))


class WebhookNotifier:
    def __init__(self, config: PluginConfig, http: httpx.AsyncClient | None = None) -> None:
        assert config.webhook is not None
        self._url = config.webhook.url
        self._secret = config.webhook.secret
        self._http = http or httpx.AsyncClient()

    def recipients(self, request: RequestInfo) -> list[str]:
        return [RECIPIENT]

    async def post(self, recipient: str, request: RequestInfo) -> Posted:
        await self._deliver(request, "access_request.created")
        # The receiver hears of every later state in its own event.
        return Posted({}, PENDING)

    async def reply(
        self, recipient: str, ref: dict[str, Any], request: RequestInfo, index: int
    ) -> None:
        review = request.reviews[index]
        await self._deliver(request, "access_request.reviewed", index, review)

    async def update(self, recipient: str, ref: dict[str, Any], request: RequestInfo) -> None:
        await self._deliver(request, f"access_request.{request.state.lower()}")

    async def tell_requester(self, request: RequestInfo) -> None:
        pass  # the receiver has the outcome event; telling the user is its business

    async def close(self) -> None:
        await self._http.aclose()

    async def _deliver(
        self, request: RequestInfo, kind: str, index: int = 0, review: Review | None = None
    ) -> None:
        ident = event_id(request.id, kind, index)
        event: dict[str, Any] = {
            "id": ident,
            "type": kind,
            "time": datetime.now(UTC).isoformat(),
            "request": request.to_json(),
        }
        if review is not None:
            event["review"] = review.to_json()
        body = json.dumps(event, sort_keys=True).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            EVENT_ID: ident,
            TIMESTAMP: stamp,
            SIGNATURE: signature(self._secret, stamp, body),
        }
        response = await send(
            self._http, "POST", self._url, what=f"webhook {kind}", content=body, headers=headers
        )
        if response.status_code >= 300:
            # Whatever the receiver's trouble (a wrong secret: 401), the event is not
            # dropped: the step is tried again later, and the log says why.
            raise ConnectionProblem(f"webhook {kind}: the receiver answered {response.status_code}")
