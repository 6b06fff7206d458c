"""A node in the cluster: its SSH server wired to the cluster's view, and heartbeats.

NodeAgent.start()
  ├─ SessionHost (srv/host.py)                  view, access, live sessions and their
  │                                             monitor, audit, recordings, trackers,
  │                                             the heartbeat loop
  ├─ NodeSSHServer(host cert from joining)      authorizer = roles + labels + locks
  └─ heartbeat                                  name, address, labels, with a TTL
"""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from pathlib import Path

from certgate.api.authority import CertAuthority
from certgate.api.codec import to_dict
from certgate.api.identity import Identity
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.node.sshd import NodeSSHServer
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from certgate.srv.authorize import access_authorizer, authorize_join
from certgate.srv.host import SessionHost
from certgate.srv.session import SessionInfo, SessionObserver, SessionPolicy
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
        self._interval = heartbeat_interval
        self.host = SessionHost(
            name, "node", auth, heartbeat_interval, strict_grace, data_dir, self._end_session
        )
        self.access = self.host.access
        self.server: NodeSSHServer | None = None
        self.addr = ""

    async def start(self, host: str, port: int, advertise_host: str) -> int:
        await self.host.start()  # before any session: leftovers are from a crash
        self.server = NodeSSHServer(
            host_key=self._identity.key_pem,
            host_cert=self._identity.bundle.ssh_cert,
            trusted_user_ca_keys=self._user_ca_keys,
            authorizer=access_authorizer(self.access, self.name, self.labels),
            audit=self.host.audit,
            node_name=self.name,
            session_observer=self._observer,
            join_authorizer=self._authorize_join,
            tracking=TrackedSessions(self.host.trackers, self.name),
            registry=self.host.registry,
        )
        bound = await self.server.start(host, port)
        self.addr = f"{advertise_host}:{bound}"
        await self.host.serving(self._heartbeat)
        return bound

    async def close(self) -> None:
        await self.host.close(self._close_server)

    async def _close_server(self) -> None:
        if self.server:
            await self.server.close()

    # decisions -------------------------------------------------------------------

    def _user_ca_keys(self) -> list[str]:
        ca = self.host.view.get("cert_authority", "user_ssh")
        if not isinstance(ca, CertAuthority):
            return []
        return [key.public for key in ca.spec.active_keys]

    def _authorize_join(self, identity: Identity, owner: SessionInfo, mode: str) -> SessionPolicy:
        return authorize_join(self.access, identity, owner.identity, mode, self.name)

    def _observer(self, info: SessionInfo) -> SessionObserver | None:
        return self.host.record(info)

    def _end_session(self, session_id: str, message: str, reason: str) -> bool:
        return self.server is not None and self.server.end_session(session_id, message, reason)

    # heartbeats ------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        node = Node(
            metadata=Metadata(name=self.name, labels=self.labels),
            spec=NodeSpec(addr=self.addr, hostname=socket.gethostname()),
        )
        # Expires 1.5 intervals on: a missed beat or two of jitter keeps it listed, and a
        # stopped node is gone within two intervals.
        ttl = self._interval * 1.5
        await self.host.beat({"node": to_dict(node), "ttl_seconds": ttl.total_seconds()})
