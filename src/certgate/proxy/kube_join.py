"""`cgsh join` of a Kubernetes exec session, at the proxy's SSH listener.

    cgsh join ID ──ssh certgate-proxy.<cluster>, login join:observer:ID──▶ ProxySSH
        at authentication  KubeJoins.target(): the session is a live k8s session (auth's
                           tracker), the joiner's locks and join_sessions (kind k8s) allow
                           observing it, and its cluster's kube service is known
        shell request      KubeObserverChannel: opens the kube service's observer stream
                           (srv/remote_join.py) and relays it into the SSH channel

The kube service decides again on its own, as a node does for SSH sessions. Observers
only: typing into someone's kubectl exec is refused with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from certgate.access.cached_access import CachedAccess
from certgate.api.identity import Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.recording import is_recording_id
from certgate.api.session_tracker import KUBE_PEER_REFUSAL
from certgate.errors import BadParameter, CertgateError, NotFound
from certgate.rpc.watcher import ResourceView
from certgate.srv.join import MAX_BEHIND_BYTES, ViewChannel, wants_to_leave
from certgate.srv.remote_join import open_observer
from certgate.tasks import log_failure

log = logging.getLogger("certgate.proxy.ssh")

READ_CHUNK = 64 * 1024

# session id -> auth's answer for that live session (GET /v1/sessions/{id})
SessionLookup = Callable[[str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class KubeJoinTarget:
    session_id: str
    cluster: str
    addr: str  # the kube service that runs the session


class KubeJoins:
    def __init__(
        self,
        access: CachedAccess,
        view: ResourceView,
        session: SessionLookup,
        service_tls: Callable[[], ssl.SSLContext],
    ) -> None:
        self._access = access
        self._view = view
        self._session = session
        self._service_tls = service_tls
        self._tls: ssl.SSLContext | None = None

    async def target(self, identity: Identity, mode: str, session_id: str) -> KubeJoinTarget:
        """Where to observe `session_id`, if `identity` may; AccessDenied/NotFound why not."""
        if mode == "peer":
            raise BadParameter(KUBE_PEER_REFUSAL)
        if mode != "observer":
            raise BadParameter(f'unknown join mode "{mode}": use observer')
        if not is_recording_id(session_id):  # it becomes part of a URL path below
            raise NotFound(f'session "{session_id}" not found: session ids are UUIDs')
        found = await self._session(session_id)
        if found.get("kind") != "k8s":
            raise NotFound(
                f"session {session_id} is not a kubernetes session: cgsh join reaches it "
                "through its node"
            )
        name = str(found["node"])
        self._access.check_join(
            identity, str(found["user"]), list(found["roles"]), mode, name, "k8s"
        )
        cluster = self._view.get("kube_cluster", name)
        if not isinstance(cluster, KubeCluster):
            raise NotFound(f'kubernetes cluster "{name}" of session {session_id} is not served')
        return KubeJoinTarget(session_id, name, cluster.spec.addr)

    def channel(
        self, target: KubeJoinTarget, identity: Identity, client_addr: str
    ) -> KubeObserverChannel:
        if self._tls is None:
            self._tls = self._service_tls()  # built once: it loads certificates
        tls = self._tls

        def connect() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return open_observer(target.addr, tls, identity, target.session_id, client_addr)

        return KubeObserverChannel(connect)


class KubeObserverChannel(ViewChannel):
    """A joiner's SSH channel showing a kube service's observer stream.

    Read-only: keystrokes go nowhere, Ctrl-C or Ctrl-D leaves. The stream is read only
    as fast as the channel drains, so a slow joiner backs up to the kube service, which
    drops it rather than slow the session down.
    """

    def __init__(
        self, connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
    ) -> None:
        self._connect = connect
        self._chan: Any = None
        self._relay: asyncio.Task[None] | None = None
        self._stream: asyncio.StreamWriter | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._done = False

    def connection_made(self, chan: Any) -> None:
        self._chan = chan
        # Far below what the kube service tolerates (MAX_BEHIND_BYTES), so the backlog
        # builds up there, where a joiner that falls behind is dropped.
        chan.set_write_buffer_limits(high=MAX_BEHIND_BYTES // 16)

    def session_started(self) -> None:
        self._relay = asyncio.ensure_future(self._run())
        self._relay.add_done_callback(
            log_failure(log, "relaying a kubernetes session to its observer")
        )

    def data_received(self, data: bytes, datatype: Any) -> None:
        if wants_to_leave(data):
            self._finish("\r\ncertgate: you left the session\r\n", 0)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._writable.set()
        self._close_stream()
        if self._relay is not None:
            self._relay.cancel()

    async def _run(self) -> None:
        try:
            reader, self._stream = await self._connect()
        except CertgateError as exc:
            self._finish(f"certgate: {exc.message}\r\n", 1)
            return
        if self._done:
            self._close_stream()
            return
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(READ_CHUNK):
                await self._writable.wait()
                if self._done:
                    return
                self._chan.write(data)
        # The kube service ended the view; its last line said why.
        self._finish("", 0)

    def _finish(self, text: str, status: int) -> None:
        if self._done:
            return
        self._done = True
        self._close_stream()
        with contextlib.suppress(OSError):
            if text:
                self._chan.write(text)
            self._chan.exit(status)

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
