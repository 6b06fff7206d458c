"""A node in the cluster: its SSH server wired to the cluster's view, and heartbeats.

NodeAgent.start()
  ├─ ResourceView(role, lock, cert_authority)   decisions without a round trip
  ├─ NodeSSHServer(host cert from joining)      authorizer = roles + labels + locks
  ├─ heartbeat loop                             name, address, labels, with a TTL
  ├─ session trackers                           live terminal sessions, for cgsh sessions/join
  └─ on a new lock: end every live session it matches, with its message
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
from certgate.api.lock import Lock, lock_matches, lock_message
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.clock import SystemClock
from certgate.errors import CertgateError
from certgate.node.sshd import NodeSSHServer
from certgate.recording.node_recordings import NodeRecordings
from certgate.recording.uploader import auth_sender
from certgate.rpc.audit import post_events
from certgate.rpc.audit_spool import AuditSpool
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from certgate.rpc.session_trackers import SessionTrackerPublisher
from certgate.rpc.watcher import ResourceView
from certgate.srv.recording_hook import RecordingHook
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
        self._auth = auth
        self._interval = heartbeat_interval
        self._clock = SystemClock()
        self.view = ResourceView(auth, ["role", "lock", "cert_authority"], self._on_change)
        self.access = CachedAccess(self.view, strict_grace=strict_grace)
        # Audit events wait on disk until auth stored them (auth stamps the node's name).
        self.audit = AuditSpool(data_dir / "audit", post_events(auth), "node audit")
        self.server: NodeSSHServer | None = None
        self.addr = ""
        self._heartbeats: asyncio.Task[None] | None = None
        # Session recordings: written under data_dir, uploaded to auth (recording_hook.py).
        self.recordings = NodeRecordings(data_dir / "recordings", auth_sender(auth))
        self._record = RecordingHook(self.recordings, name, self._recording_mode, self._end_session)
        self._watchdog: asyncio.Task[None] | None = None
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
            authorizer=self._authorize,
            audit=self.audit,
            node_name=self.name,
            session_observer=self._observer,
            join_authorizer=self._authorize_join,
            tracking=TrackedSessions(self._trackers, self.name),
        )
        self._trackers.start()
        bound = await self.server.start(host, port)
        self.addr = f"{advertise_host}:{bound}"
        await self._heartbeat()
        self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="node heartbeats")
        self._watchdog = asyncio.create_task(self._strict_watchdog(), name="strict locking")
        return bound

    async def close(self) -> None:
        for task in (self._heartbeats, self._watchdog):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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

    async def _authorize(self, identity: Identity, login: str, client_addr: str) -> SessionPolicy:
        role_set = self.access.check_login(identity, self.name, self.labels, login)
        options = role_set.options()
        return SessionPolicy(
            port_forwarding=options.port_forwarding, forward_agent=options.forward_agent
        )

    def _authorize_join(self, identity: Identity, owner: SessionInfo, mode: str) -> None:
        self.access.check_join(
            identity, owner.identity.username, owner.identity.roles, mode, self.name
        )

    def _observer(self, info: SessionInfo) -> SessionObserver | None:
        return self._record(info)

    def _recording_mode(self, identity: Identity) -> str:
        return self.access.role_set(identity).options().record_session.ssh

    def _end_session(self, session_id: str, message: str, reason: str) -> bool:
        return self.server is not None and self.server.end_session(session_id, message, reason)

    async def _on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        if kind != "lock" or not isinstance(resource, Lock) or self.server is None:
            return
        now = self._clock.now()

        def matches(identity: Identity, login: str) -> bool:
            return lock_matches(
                resource,
                user=identity.username,
                roles=identity.roles,
                request_ids=identity.request_ids,
                login=login,
                node=self.name,
                now=now,
            )

        ended = await self.server.terminate_sessions(
            matches, lock_message(resource), reason="locked", audit_fields={"lock": name}
        )
        if ended:
            log.info("lock %s ended %d session(s)", name, ended)

    async def _strict_watchdog(self) -> None:
        """Ends the sessions of strict-locking roles once the lock view went stale."""
        while True:
            await asyncio.sleep(0.5)
            if self.server is None or not self.access.view_is_stale():
                continue
            ended = await self.server.terminate_sessions(
                lambda identity, login: self.access.strict_and_cut_off(identity),
                "access denied: locked: this node cannot confirm locks with auth, "
                "and your roles require it (locking_mode: strict)",
                reason="locked",
                audit_fields={"lock": "strict locking: auth unreachable"},
            )
            if ended:
                log.warning("auth unreachable: ended %d strict-locking session(s)", ended)

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
        while True:
            await asyncio.sleep(seconds * (0.9 + 0.2 * random.random()))
            try:
                await self._heartbeat()
            except CertgateError as exc:
                log.warning("heartbeat failed: %s", exc)
