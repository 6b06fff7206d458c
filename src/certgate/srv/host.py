"""What every service that hosts sessions holds besides its own server, in one place.

A node (SSH shells) and a kube service (kubectl exec/attach) differ in the protocol they
serve and the resource they heartbeat; the rest is the same and starts and stops in one
order:

    SessionHost
      ├─ ResourceView(role, lock, cert_authority)   decisions without a round trip
      ├─ CachedAccess                               roles, locks, joins
      ├─ SessionRegistry + SessionMonitor           live sessions; locks, strict locking,
      │                                             idle clients, expired certificates
      ├─ AuditSpool                                 events wait on disk until auth has them
      ├─ NodeRecordings + RecordingHook             recorded on disk, uploaded to auth
      ├─ SessionTrackerPublisher                    `cgsh sessions ls`
      └─ heartbeats                                 jittered; retried sooner after a failure
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from certgate.access.cached_access import CachedAccess
from certgate.api.identity import Identity
from certgate.errors import CertgateError, ConnectionProblem
from certgate.recording.node_recordings import NodeRecordings
from certgate.recording.uploader import auth_sender
from certgate.rpc.audit import post_events
from certgate.rpc.audit_spool import AuditSpool
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.failover import Backoff
from certgate.rpc.session_trackers import SessionTrackerPublisher
from certgate.rpc.watcher import ResourceView, ping_seconds
from certgate.srv.monitor import SessionMonitor
from certgate.srv.recording_hook import RecordingHook, announce_recording
from certgate.srv.registry import SessionRegistry

# What a host (a node, a kube service) watches on auth: who may log in, locks, and the
# CAs that vouch for users.
WATCHED_KINDS = ["role", "lock", "cert_authority"]

log = logging.getLogger("certgate")

# While busy, audit events and session trackers go to auth in one call per this many
# seconds, not one per event (docs/audit.md): they reach auth up to that much later.
# Locks and the cuts they cause come through the watch and never wait for it.
DELIVERY_INTERVAL = 0.5
# How long a heartbeat sent up the watch waits for auth's answer (a call waits as long).
BEAT_ANSWER_SECONDS = 15.0

# (session id, message, reason) -> whether a live session of that id was ended
EndSession = Callable[[str, str, str], bool]


class SessionHost:
    def __init__(
        self,
        name: str,
        what: str,
        auth: AsyncAuthClient,
        heartbeat_interval: timedelta,
        strict_grace: float,
        data_dir: Path,
        end_session: EndSession,
    ) -> None:
        """`what` names the service in logs and refusals ("node", "kube service")."""
        self._what = what
        self._auth = auth
        self._interval = heartbeat_interval
        self.view = ResourceView(
            auth,
            WATCHED_KINDS,
            self._on_change,
            ping_every=ping_seconds(strict_grace),
            carries_requests=True,  # the heartbeats ride the watch: one connection to auth
        )
        self.access = CachedAccess(self.view, strict_grace=strict_grace)
        self.registry = SessionRegistry()
        self.monitor = SessionMonitor(self.registry, self.access, server=what)
        # Audit events wait on disk until auth stored them (auth stamps the service's name).
        self.audit = AuditSpool(
            data_dir / "audit",
            post_events(auth),
            f"{what} audit",
            min_interval=DELIVERY_INTERVAL,
        )
        # Session recordings: written under data_dir, uploaded to auth (recording_hook.py).
        self.recordings = NodeRecordings(
            data_dir / "recordings", auth_sender(auth), partial(announce_recording, self.audit.put)
        )
        self.record = RecordingHook(
            self.recordings, name, self.recording_mode, end_session, self.audit.put
        )
        # Live sessions are refreshed with the heartbeat and outlive a dead service by at
        # most three intervals, as its place in the inventory does by two.
        seconds = heartbeat_interval.total_seconds()
        self.trackers = SessionTrackerPublisher(
            auth, ttl=3 * seconds, refresh=seconds, min_interval=DELIVERY_INTERVAL
        )
        self._heartbeats: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Before the service's own server: a view to decide with, and what an earlier
        run left (recordings from a crash, unsent audit events) on its way."""
        self.view.start()
        await self.view.wait_ready()
        await self.recordings.start()
        await self.audit.start()
        self.trackers.start()

    async def serving(self, heartbeat: Callable[[], Awaitable[None]]) -> None:
        """Once the server listens: the first heartbeat, then the loop and the monitor."""
        await heartbeat()
        self._heartbeats = asyncio.create_task(
            self._heartbeat_loop(heartbeat), name=f"{self._what} heartbeats"
        )
        self.monitor.start()

    async def close(self, close_server: Callable[[], Awaitable[None]]) -> None:
        """Stop in reverse: no new cuts, the server, then what carries events to auth."""
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            await asyncio.gather(self._heartbeats, return_exceptions=True)
        await self.monitor.close()
        await close_server()
        await self.audit.close()
        await self.trackers.close()
        await self.recordings.close()
        await self.view.close()

    async def beat(self, body: dict[str, Any]) -> None:
        """Send a heartbeat (the body of POST /v1/nodes/heartbeat) up the watch's socket,
        so the service holds one connection to auth, not two.

        While the socket is being reconnected (auth restarted, or failed over) the beat
        waits for it up to half an interval, which the node's TTL (1.5 intervals)
        allows: as a call at once it would open a second connection, and 10,000 nodes
        coming back to a restarted auth would double its handshakes. Past that, or for
        an auth without the socket form, it goes as a call. So it does while the watch's
        auth says it is behind its store: cut off from the database, it could not store
        the beat either (it would answer after its pool's timeout), and a call goes on
        to the next auth address that serves (rpc/auth_client.py)."""
        if not self.view.auth_behind and await self.view.carrying_within(
            self._interval.total_seconds() / 2
        ):
            try:
                await self.view.ask({"type": "heartbeat", **body}, timeout=BEAT_ANSWER_SECONDS)
                return
            except ConnectionProblem as exc:  # the socket went: the call may still get through
                log.info(
                    "%s heartbeat over the watch failed (%s); sending it as a call", self._what, exc
                )
        await self._auth.call("POST", "/v1/nodes/heartbeat", json=body)

    def recording_mode(self, identity: Identity, kind: str) -> str:
        return self.access.role_set(identity).options().record_session.mode(kind)

    async def _on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        await self.monitor.on_change(kind, name, resource)

    async def _heartbeat_loop(self, heartbeat: Callable[[], Awaitable[None]]) -> None:
        seconds = self._interval.total_seconds()
        # After a failed beat (auth down, or failing over to another), retry sooner than
        # the interval, with full jitter so a fleet that lost its auth together does not
        # return together; never later than the interval, so the service stays listed.
        retry = Backoff(base=min(1.0, seconds), cap=seconds)
        delay = seconds * (0.9 + 0.2 * random.random())
        while True:
            await asyncio.sleep(delay)
            try:
                await heartbeat()
            except CertgateError as exc:
                log.warning("%s heartbeat failed: %s", self._what, exc)
                delay = retry.next()
            else:
                retry.reset()
                delay = seconds * (0.9 + 0.2 * random.random())
