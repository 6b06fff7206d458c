"""A node in the cluster: its SSH server wired to the cluster's view, and heartbeats.

NodeAgent.start()
  ├─ ResourceView(role, lock, cert_authority)   decisions without a round trip
  ├─ NodeSSHServer(host cert from joining)      authorizer = roles + labels + locks
  ├─ heartbeat loop                             name, address, labels, with a TTL
  ├─ session trackers                           live terminal sessions, for cgsh sessions/join
  └─ SessionMonitor (srv/monitor.py)            ends live sessions: locks, strict locking
                                                with a stale view, idle clients, expired
                                                certificates
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from certgate.access.cached_access import CachedAccess
from certgate.api.authority import CertAuthority
from certgate.api.codec import to_dict
from certgate.api.identity import Identity
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.errors import CertgateError
from certgate.node.sshd import NodeSSHServer
from certgate.recording.node_recordings import NodeRecordings
from certgate.recording.uploader import auth_sender
from certgate.rpc.audit import post_events
from certgate.rpc.audit_spool import AuditSpool
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.failover import Backoff
from certgate.rpc.identity_files import IdentityFiles
from certgate.rpc.session_trackers import SessionTrackerPublisher
from certgate.rpc.watcher import ResourceView
from certgate.srv.authorize import access_authorizer
from certgate.srv.monitor import SessionMonitor
from certgate.srv.recording_hook import RecordingHook
from certgate.srv.registry import SessionRegistry
from certgate.srv.session import SessionInfo, SessionObserver
from certgate.srv.tracking import TrackedSessions

log = logging.getLogger("certgate.node")


class NodeAgent:
    def __init__(
        self,
        name: str,
        identity: IdentityFiles,
        auth: AsyncAuthClient,
        labels: dict[str, str],
        heartbeat_interval: timedelta,
        strict_grace: float = 30.0,
        *,
        data_dir: Path,
    ) -> None:
        self.name = name
        self.labels = labels
        self._identity = identity
        self._auth = auth
        self._interval = heartbeat_interval
        self.view = ResourceView(auth, ["role", "lock", "cert_authority"], self._on_change)
        self.access = CachedAccess(self.view, strict_grace=strict_grace)
        self.registry = SessionRegistry()
        self.monitor = SessionMonitor(self.registry, self.access, server="node")
        # Audit events wait on disk until auth stored them (auth stamps the node's name).
        self.audit = AuditSpool(data_dir / "audit", post_events(auth), "node audit")
        self.server: NodeSSHServer | None = None
        self.addr = ""
        self._heartbeats: asyncio.Task[None] | None = None
        # Session recordings: written under data_dir, uploaded to auth (recording_hook.py).
        self.recordings = NodeRecordings(data_dir / "recordings", auth_sender(auth))
        self._record = RecordingHook(self.recordings, name, self._recording_mode, self._end_session)
        # Live sessions are refreshed with the heartbeat and outlive a dead node by at
        # most three intervals, as its place in `cgsh ls` does by two.
        seconds = heartbeat_interval.total_seconds()
        self._trackers = SessionTrackerPublisher(auth, ttl=3 * seconds, refresh=seconds)

    async def start(self, host: str, port: int, advertise_host: str) -> int:
        self.view.start()
        await self.view.wait_ready()
        await self.recordings.start()  # before any session: leftovers are from a crash
        await self.audit.start()  # sends what an earlier run left, too
        self.server = NodeSSHServer(
            host_key=self._identity.key_pem,
            host_cert=self._identity.bundle.ssh_cert,
            trusted_user_ca_keys=self._user_ca_keys,
            authorizer=access_authorizer(self.access, self.name, self.labels),
            audit=self.audit,
            node_name=self.name,
            session_observer=self._observer,
            join_authorizer=self._authorize_join,
            tracking=TrackedSessions(self._trackers, self.name),
            registry=self.registry,
        )
        self._trackers.start()
        bound = await self.server.start(host, port)
        self.addr = f"{advertise_host}:{bound}"
        await self._heartbeat()
        self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="node heartbeats")
        self.monitor.start()
        return bound

    async def close(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            await asyncio.gather(self._heartbeats, return_exceptions=True)
        await self.monitor.close()
        if self.server:
            await self.server.close()
        await self.audit.close()
        await self._trackers.close()
        await self.recordings.close()
        await self.view.close()

    # decisions -------------------------------------------------------------------

    def _user_ca_keys(self) -> list[str]:
        ca = self.view.get("cert_authority", "user_ssh")
        if not isinstance(ca, CertAuthority):
            return []
        return [key.public for key in ca.spec.active_keys]

    def _authorize_join(self, identity: Identity, owner: SessionInfo, mode: str) -> None:
        self.access.check_join(
            identity, owner.identity.username, owner.identity.roles, mode, self.name
        )

    def _observer(self, info: SessionInfo) -> SessionObserver | None:
        return self._record(info)

    def _recording_mode(self, identity: Identity, kind: str) -> str:
        return self.access.role_set(identity).options().record_session.mode(kind)

    def _end_session(self, session_id: str, message: str, reason: str) -> bool:
        return self.server is not None and self.server.end_session(session_id, message, reason)

    async def _on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        await self.monitor.on_change(kind, name, resource)

    # heartbeats ------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        node = Node(
            metadata=Metadata(name=self.name, labels=self.labels),
            spec=NodeSpec(addr=self.addr, hostname=socket.gethostname()),
        )
        # Expires 1.5 intervals on: a missed beat or two of jitter keeps it listed, and a
        # stopped node is gone within two intervals.
        ttl = self._interval * 1.5
        await self._auth.call(
            "POST",
            "/v1/nodes/heartbeat",
            json={"node": to_dict(node), "ttl_seconds": ttl.total_seconds()},
        )

    async def _heartbeat_loop(self) -> None:
        seconds = self._interval.total_seconds()
        # After a failed beat (auth down, or failing over to another), retry sooner than
        # the interval, with full jitter so a fleet that lost its auth together does not
        # return together; never later than the interval, so the node stays listed.
        retry = Backoff(base=min(1.0, seconds), cap=seconds)
        delay = seconds * (0.9 + 0.2 * random.random())
        while True:
            await asyncio.sleep(delay)
            try:
                await self._heartbeat()
            except CertgateError as exc:
                log.warning("heartbeat failed: %s", exc)
                delay = retry.next()
            else:
                retry.reset()
                delay = seconds * (0.9 + 0.2 * random.random())
