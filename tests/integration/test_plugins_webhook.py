"""An admin runs the webhook plugin; a receiver written from docs/plugins.md verifies
each event and refuses replays (a repeated event, an old timestamp, a changed body)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.plugins.live import PluginProcess, create_request, plugin_identity, review, setup_people
from tests.support.cluster import Cluster
from tests.support.http_standin import ThreadedServer
from tests.support.wait import eventually

SECRET = "a shared secret of some length"

# --- the receiver, as docs/plugins.md tells one to write it -----------------------------

WINDOW = 300  # seconds a delivery stays valid


def verify(secret: bytes, headers: Any, body: bytes, now: float) -> bool:
    stamp = headers.get("Certgate-Timestamp", "")
    given = headers.get("Certgate-Signature", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > WINDOW:
        return False  # too old, or from the future: a replay
    signed = stamp.encode() + b"." + body
    expected = "v1=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


@dataclass
class Receiver:
    clock_offset: float = 0.0  # how far ahead the receiver's clock runs
    events: list[dict[str, Any]] = field(default_factory=list)
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    refused: int = 0
    repeats: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            if not verify(SECRET.encode(), request.headers, body, time.time() + self.clock_offset):
                self.refused += 1
                return web.Response(status=401)
            event = json.loads(body)
            if event["id"] in self.seen:  # delivered before: say yes, do nothing
                self.repeats += 1
                return web.Response(status=200)
            self.seen.add(event["id"])
            self.events.append(event)
            self.raw.append((dict(request.headers), body))
            return web.Response(status=200)


# ------------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/certgate", found.handle)
    server = ThreadedServer(app)
    server.start()
    yield found, f"{server.url}/hooks/certgate"
    server.stop()


def test_events_are_signed_ordered_and_replays_refused(
    cluster: Cluster, workdir: Path, receiver: tuple[Receiver, str]
) -> None:
    hooks, url = receiver
    people = setup_people(cluster, workdir)
    config = {
        "proxy": cluster.proxy_addr,
        "identity": str(plugin_identity(cluster, workdir, "webhook-plugin")),
        "state_file": str(workdir / "webhook-state.json"),
        "webhook": {"url": url, "secret": SECRET},
    }
    plugin = PluginProcess("webhook", config, workdir).start()
    try:
        rid = create_request(cluster, people.alice, reason="db migration")["metadata"]["name"]
        eventually(lambda: hooks.events)
        review(cluster, people.bob, rid, "deny", "use the runbook")
        eventually(lambda: len(hooks.events) == 3)
    finally:
        assert plugin.stop() == 0
    assert [e["type"] for e in hooks.events] == [
        "access_request.created",
        "access_request.reviewed",
        "access_request.denied",
    ]
    created, reviewed, denied = hooks.events
    assert created["request"]["id"] == rid
    assert created["request"]["user"] == "alice"
    assert created["request"]["roles"] == ["kube-admin"]
    assert created["request"]["reason"] == "db migration"
    assert created["request"]["max_duration"] == "4h"
    assert reviewed["review"] == {
        "author": "bob",
        "verdict": "deny",
        "reason": "use the runbook",
        "created": reviewed["review"]["created"],
    }
    assert denied["request"]["state"] == "DENIED"
    assert len({e["id"] for e in hooks.events}) == 3
    assert hooks.refused == 0

    headers, body = hooks.raw[0]
    resend = {k: v for k, v in headers.items() if k.startswith("Certgate-")}
    resend["Content-Type"] = "application/json"
    # The same delivery again, inside the window: recognised and not acted on twice.
    assert httpx.post(url, content=body, headers=resend).status_code == 200
    assert hooks.repeats == 1 and len(hooks.events) == 3
    # A body changed under the same signature: refused.
    forged = body.replace(b'"alice"', b'"mallory"')
    assert forged != body
    assert httpx.post(url, content=forged, headers=resend).status_code == 401
    # A newer timestamp without the secret to sign it: refused.
    fresh = dict(resend, **{"Certgate-Timestamp": str(int(time.time()) + 1)})
    assert httpx.post(url, content=body, headers=fresh).status_code == 401
    # The captured delivery, replayed after the window: refused before anything else.
    hooks.clock_offset = WINDOW + 60
    hooks.seen.clear()  # even a receiver that forgot its ids refuses it
    assert httpx.post(url, content=body, headers=resend).status_code == 401
    assert hooks.refused == 3 and len(hooks.events) == 3
