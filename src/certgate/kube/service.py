"""The kube service: Kubernetes clusters in the cluster's inventory, and their forwarder.

KubeService.start()
  ├─ SessionHost (srv/host.py)                  view, access, live exec sessions and their
  │                                             monitor, audit, recordings, trackers,
  │                                             the heartbeat loop, as a node's
  ├─ KubeForwarder (mTLS, proxies only)         forwarder.py; a proxy in the same
  │                                             process hands it requests directly
  │                                             (LocalServers, srv/http1_server.py)
  │    └─ KubeObservers                         `cgsh join` of exec sessions (observe.py)
  └─ heartbeat                                  one kube_cluster per upstream, with a TTL
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from certgate.api.codec import to_dict
from certgate.api.kube_cluster import KubeCluster, KubeClusterSpec
from certgate.api.meta import Metadata
from certgate.errors import AccessDenied
from certgate.kube.forwarder import KubeForwarder
from certgate.kube.kubeconfig import Upstream
from certgate.kube.observe import KubeObservers
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from certgate.srv.host import SessionHost
from certgate.srv.http1_server import LocalServers
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
        local: LocalServers | None = None,
    ) -> None:
        self.name = name
        self._identity = identity
        self._interval = heartbeat_interval
        self._refused: dict[str, str] = {}  # cluster -> why its last beat was refused
        self.labels = labels
        self.upstreams = {u.name: u for u in upstreams}
        self.host = SessionHost(
            name, "kube service", auth, heartbeat_interval, strict_grace, data_dir, self._end
        )
        host = self.host
        self.forwarder = KubeForwarder(
            upstreams=self.upstreams,
            labels=labels,
            access=host.access,
            registry=host.registry,
            observe=host.record,
            recording_mode=host.recording_mode,
            audit=host.audit.put,
            name=name,
            tracking=TrackedSessions(host.trackers, name),
            observers=KubeObservers(host.registry, host.access, host.audit.put),
        )
        self.addr = ""
        self._local = local  # a proxy in this process hands requests over there

    async def start(self, host: str, port: int, advertise_host: str) -> int:
        await self.host.start()
        host_ca = self._identity.bundle.tls_cas[:1]  # proxies hold host certificates
        context = server_context(
            self._identity.bundle.tls_cert,
            self._identity.key_pem,
            client_cas=host_ca,
            require_client_cert=True,
        )
        bound = await self.forwarder.start(host, port, context)
        self.addr = f"{advertise_host}:{bound}"
        if self._local is not None:
            self._local.add(self.addr, self.forwarder.call_local)
        await self.host.serving(self._heartbeat)
        return bound

    async def close(self) -> None:
        if self._local is not None:
            self._local.remove(self.addr)
        await self.host.close(self.forwarder.close)

    def _end(self, session_id: str, message: str, reason: str) -> bool:
        return self.host.registry.end_session(session_id, message, reason)

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
            try:
                await self.host.beat(body)
            except AccessDenied as exc:
                # One cluster refused (another kube service serves its name) must not
                # keep this service's other clusters from being announced. Said once,
                # not on every beat.
                if self._refused.get(upstream.name) != exc.message:
                    log.warning("kube service: cluster %s not announced: %s", upstream.name, exc)
                self._refused[upstream.name] = exc.message
            else:
                if self._refused.pop(upstream.name, None) is not None:
                    log.warning("kube service: cluster %s announced", upstream.name)
