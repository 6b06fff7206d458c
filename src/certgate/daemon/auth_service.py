"""Building the auth service: its store, audit log and server, and its HTTPS app.

The one place that assembles them, for `certgate start` and for each extra auth
process (`auth_service.workers`, see auth_workers.py), so every process serving the
auth API is built the same way.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from certgate.auth.http import AuthAPI
from certgate.auth.server import AuthServer
from certgate.backend.registry import open_backend, open_event_store
from certgate.clock import SystemClock
from certgate.daemon.config import AuthService
from certgate.daemon.diag import Metrics
from certgate.recording.registry import open_recording_store
from certgate.recording.store import RecordingStore
from certgate.services.audit import AuditLog
from certgate.services.audit_fallback import AuditFallback
from certgate.transport import server_context

log = logging.getLogger("certgate.auth")

Closer = Callable[[], Awaitable[Any]]


async def open_auth_server(
    cfg: AuthService,
    data_dir: Path,
    *,
    cluster_name: str,
    proxy_public_addr: str,
    auth_addr: str,
    closers: list[Closer],
) -> AuthServer:
    """Open the store and audit log and start the auth server on them.

    What must be closed is appended to `closers` as it opens; close them last first.
    """
    storage = cfg.storage.model_dump()
    backend = await open_backend(storage, data_dir)
    closers.append(backend.close)
    events = await open_event_store(storage, data_dir)
    closers.append(events.close)
    audit = AuditLog(
        events,
        data_dir / "log" / "events.log",
        fallback=AuditFallback(data_dir / "audit_fallback", events),
    )
    await audit.start()
    closers.append(audit.close)  # before the event store closes
    server = AuthServer(
        backend,
        audit,
        SystemClock(),
        cluster_name=cluster_name,
        proxy_public_addr=proxy_public_addr,
        auth_addr=auth_addr,
    )
    await server.start()
    closers.append(server.close)
    return server


def auth_app(
    server: AuthServer, metrics: Metrics, cfg: AuthService, data_dir: Path
) -> web.Application:
    """The auth HTTPS API (to be served with client certificates required by TLS)."""
    recordings = open_recording_store(cfg.recordings.uri, data_dir)
    api = AuthAPI(server, metrics, recordings=recordings)
    app = api.app()
    app.middlewares.append(metrics.middleware("auth"))
    metrics.store_behind.set_function(server.backend.seconds_behind)
    metrics.audit_held.set_function(lambda: server.audit.held)

    async def check_recordings(app: web.Application) -> AsyncIterator[None]:
        # In the background: a slow bucket must not hold up the start, and a missing
        # one must not stop it (nodes keep their recordings and retry).
        check = asyncio.create_task(_check_recordings(recordings))
        yield
        check.cancel()
        await asyncio.gather(check, return_exceptions=True)

    app.cleanup_ctx.append(check_recordings)
    return app


async def _check_recordings(recordings: RecordingStore) -> None:
    """Say at start, in one line, that the recordings store cannot be used, rather than
    at the first upload."""
    problem = await recordings.check()
    if problem is not None:
        log.error(
            "%s: session recordings cannot be stored or played until it is fixed"
            " (nodes keep them and retry)",
            problem,
        )


def auth_tls_context(cert_pem: str, key_pem: str, client_cas: Sequence[str]) -> ssl.SSLContext:
    """The TLS server context of the auth API: client certificates asked for, and no
    session tickets. Auth's clients (nodes, proxies, the CLIs: httpx over Python's ssl)
    never resume a session, so a ticket is work for nothing, and not a little: OpenSSL
    3.0 sends two per TLS 1.3 handshake, each a copy of the session through its
    serialized form that decodes the client's public key again (a sixth of auth's
    handshake CPU when 10,000 nodes reconnect after a restart).
    """
    context = server_context(cert_pem, key_pem, client_cas=client_cas)
    context.num_tickets = 0
    return context
