"""The kube service: Kubernetes clusters in the cluster's inventory, and their forwarder.

KubeService.start()
  ├─ ResourceView(role, lock, cert_authority)   decisions without a round trip
  ├─ KubeForwarder (mTLS, proxies only)         forwarder.py
  │    └─ KubeObservers                         `cgsh join` of exec sessions (observe.py)
  ├─ heartbeats                                 one kube_cluster per upstream, with a TTL
  ├─ recordings + session trackers              exec/attach sessions, like a node's
  └─ SessionMonitor (srv/monitor.py)            ends live sessions: locks, strict locking,
                                                idle clients, expired certificates
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from certgate.access.cached_access import CachedAccess
from certgate.api.codec import to_dict
from certgate.api.identity import Identity
from certgate.api.kube_cluster import KubeCluster, KubeClusterSpec
from certgate.api.meta import Metadata
from certgate.errors import CertgateError
from certgate.kube.forwarder import KubeForwarder
from certgate.kube.kubeconfig import Upstream
from certgate.kube.observe import KubeObservers
from certgate.recording.node_recordings import NodeRecordings
from certgate.recording.uploader import auth_sender
from certgate.rpc.audit import post_events
from certgate.rpc.audit_spool import AuditSpool
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from certgate.rpc.session_trackers import SessionTrackerPublisher
from certgate.rpc.watcher import ResourceView
from certgate.srv.monitor import SessionMonitor
from certgate.srv.recording_hook import RecordingHook
from certgate.srv.registry import SessionRegistry
from certgate.srv.tracking import TrackedSessions
from certgate.transport import server_context

log = logging.getLogger("certgate.kube")


class KubeService:
    def __init__(
        self,
        name: str,
        identity: IdentityFiles,
        auth: AsyncAuthClient,
        upstreams: list[Upstream],
        labels: dict[str, str],
        heartbeat_interval: timedelta,
        strict_grace: float = 30.0,
        *,
        data_dir: Path,
    ) -> None:
        self.name = name
        self._identity = identity
        self._auth = auth
        self._interval = heartbeat_interval
        self.labels = labels
        self.upstreams = {u.name: u for u in upstreams}
        self.view = ResourceView(auth, ["role", "lock", "cert_authority"], self._on_change)
        self.access = CachedAccess(self.view, strict_grace=strict_grace)
        self.registry = SessionRegistry()
        self.monitor = SessionMonitor(self.registry, self.access, server="kube service")
        # Audit events wait on disk until auth stored them, batched per call to auth.
        self._audit = AuditSpool(data_dir / "audit", post_events(auth), "kube audit")
        self.recordings = NodeRecordings(data_dir / "recordings", auth_sender(auth))
        self._record = RecordingHook(self.recordings, name, self._recording_mode, self._end)
        # Live terminal sessions (`cgsh sessions ls`), refreshed with the heartbeat and
        # outliving a dead service by at most three intervals, as a node's do.
        seconds = heartbeat_interval.total_seconds()
        self._trackers = SessionTrackerPublisher(auth, ttl=3 * seconds, refresh=seconds)
        self.forwarder = KubeForwarder(
            upstreams=self.upstreams,
            labels=labels,
            access=self.access,
            registry=self.registry,
            observe=self._record,
            recording_mode=self._recording_mode,
            audit=self._audit.put,
            name=name,
            tracking=TrackedSessions(self._trackers, name),
            observers=KubeObservers(self.registry, self.access, self._audit.put),
        )
        self.addr = ""
        self._heartbeats: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, advertise_host: str) -> int:
        self.view.start()
        await self.view.wait_ready()
        await self.recordings.start()
        await self._audit.start()  # sends what an earlier run left, too
        self._trackers.start()
        host_ca = self._identity.bundle.tls_cas[:1]  # proxies hold host certificates
        context = server_context(
            self._identity.bundle.tls_cert,
            self._identity.key_pem,
            client_cas=host_ca,
            require_client_cert=True,
        )
        bound = await self.forwarder.start(host, port, context)
        self.addr = f"{advertise_host}:{bound}"
        await self._heartbeat()
        self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="kube heartbeats")
        self.monitor.start()
        return bound

    async def close(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            await asyncio.gather(self._heartbeats, return_exceptions=True)
        await self.monitor.close()
        await self.forwarder.close()
        await self._audit.close()
        await self._trackers.close()
        await self.recordings.close()
        await self.view.close()

    def _recording_mode(self, identity: Identity, kind: str) -> str:
        return self.access.role_set(identity).options().record_session.mode(kind)

    def _end(self, session_id: str, message: str, reason: str) -> bool:
        return self.registry.end_session(session_id, message, reason)

    async def _on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        await self.monitor.on_change(kind, name, resource)

    # heartbeats ------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        ttl = self._interval * 1.5
        for upstream in self.upstreams.values():
            cluster = KubeCluster(
                metadata=Metadata(name=upstream.name, labels=self.labels),
                spec=KubeClusterSpec(addr=self.addr, service=self.name),
            )
            body: dict[str, Any] = {
                "kube_cluster": to_dict(cluster),
                "ttl_seconds": ttl.total_seconds(),
            }
            await self._auth.call("POST", "/v1/nodes/heartbeat", json=body)

    async def _heartbeat_loop(self) -> None:
        seconds = self._interval.total_seconds()
        while True:
            await asyncio.sleep(seconds * (0.9 + 0.2 * random.random()))
            try:
                await self._heartbeat()
            except CertgateError as exc:
                log.warning("kube heartbeat failed: %s", exc)
