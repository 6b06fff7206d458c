"""`certgate start`: runs the enabled services in one asyncio loop until SIGTERM.

start()
  ├─ data dir checks, diagnostics listener
  ├─ auth   (store, CAs, admin identity in <data_dir>/admin, HTTPS+mTLS API; a private
  │         loopback listener for the services below when any runs in this process)
  ├─ proxy  (identity from local auth, or by joining; web listener)
  └─ first admin invite (with --first-admin, on an empty cluster)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pwd
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel

from certgate.access.cached_access import CachedAccess
from certgate.api.authority import CertAuthority
from certgate.api.identity import SYSTEM_KUBE, SYSTEM_NODE, SYSTEM_PROXY
from certgate.api.names import check_name
from certgate.auth.server import AuthServer
from certgate.backend.base import BEHIND_UNAVAILABLE, Backend
from certgate.daemon import gc_tuning
from certgate.daemon.auth_service import auth_app, auth_tls_context, open_auth_server
from certgate.daemon.auth_workers import (
    AuthWorkerPool,
    WorkerSpec,
    check_port_free,
    listening_sockets,
    serve_on,
    worker_count,
)
from certgate.daemon.config import Config, HTTPLimits, dial_addr, split_addr
from certgate.daemon.diag import Diagnostics, Metrics
from certgate.daemon.listeners import LimitedSite, bound_sockets, limited_runner, open_files_for
from certgate.daemon.logs import secure_data_dir
from certgate.errors import BadParameter, CertgateError, NotFound, what_broke
from certgate.kube.kubeconfig import in_cluster, load_kubeconfig
from certgate.kube.service import KubeService
from certgate.node.agent import NodeAgent
from certgate.proxy.agentless import AgentlessForwarder
from certgate.proxy.agentless_certs import AuthAgentlessCerts
from certgate.proxy.kube_join import KubeJoins
from certgate.proxy.kube_listener import KubeListener
from certgate.proxy.sshd import ProxySSH
from certgate.proxy.web import ProxyWeb
from certgate.proxy.webui import end_locked
from certgate.recording.node_recordings import NodeRecordings
from certgate.recording.uploader import auth_sender
from certgate.rpc.audit import SpoolSink, post_events
from certgate.rpc.audit_spool import AuditSpool
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles, new_key
from certgate.rpc.join import join_cluster
from certgate.rpc.session_trackers import SessionTrackerPublisher
from certgate.rpc.watcher import ResourceView
from certgate.srv.http1_server import Http1Limits, LocalServers
from certgate.srv.monitor import SessionMonitor
from certgate.srv.recording_hook import RecordingHook, announce_recording
from certgate.srv.registry import SessionRegistry
from certgate.srv.tracking import TrackedSessions
from certgate.transport import client_context, server_context

log = logging.getLogger("certgate")

FIRST_ADMIN_ROLES = ["access", "editor", "auditor"]
SHUTDOWN_STEP_SECONDS = 5


@dataclass(frozen=True)
class _JoinedService:
    host: str  # listened on
    port: int
    advertise_host: str  # dialled by the proxy
    identity: IdentityFiles
    auth: AsyncAuthClient


class _JoinedServer(Protocol):
    """The node agent and the kube service, as the daemon starts and stops them."""

    async def start(self, host: str, port: int, advertise_host: str) -> int: ...

    async def close(self) -> None: ...


@dataclass
class Daemon:
    config: Config
    data_dir: Path
    first_admin: str = ""
    announce: Callable[[str], None] = field(default=lambda text: print(text, flush=True))
    metrics: Metrics = field(default_factory=Metrics)
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    auth: AuthServer | None = None
    auth_addr: str = ""
    # Where this process's own proxy, node and kube service reach its auth: a loopback
    # listener of their own, not the public port (see _listen_privately).
    private_auth_addr: str = ""
    # A kube service started here takes its requests from the proxy started here
    # in-process, without TLS to itself.
    _local_servers: LocalServers = field(default_factory=LocalServers)

    @property
    def nodename(self) -> str:
        return self.config.nodename or socket.gethostname()

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            # A signal while starting (a service waiting for an auth that is away)
            # stops the start, not only what comes after it.
            starting = asyncio.create_task(self.start(), name="certgate start")
            stopping = asyncio.create_task(stop.wait(), name="certgate stop signal")
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stopped while starting")
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            stopping.cancel()
            starting.result()  # its error, if it failed
            gc_tuning.settle_after_start()
            await stop.wait()
            log.info("shutting down")
        finally:
            gc_tuning.stop_collecting()
            await self.close()

    async def start(self) -> None:
        config = self.config
        joins = (
            config.proxy_service.enabled
            or config.ssh_service.enabled
            or config.kubernetes_service.enabled
        )
        if joins and not config.auth_service.enabled and not config.auth_servers:
            raise BadParameter(
                "this process runs no auth service: give --auth-server HOST:PORT (and"
                " --token to join the cluster)"
            )
        # Checked before anything starts: the name goes into certificates and the
        # inventory, and a bad one would fail only after every listener is up.
        check_name(self.nodename, "--nodename")
        if self.first_admin:
            check_name(self.first_admin, "--first-admin")
        _check_data_dir(self.data_dir)
        diagnostics = Diagnostics(self.metrics)
        if self.config.diag_addr:
            await self._listen(diagnostics.app(), self.config.diag_addr, 3434, None, "diagnostics")
        if self.config.auth_service.enabled:
            await self._start_auth(diagnostics)
        if self.config.proxy_service.enabled:
            await self._start_proxy()
        if self.config.ssh_service.enabled:
            await self._start_node()
        if self.config.kubernetes_service.enabled:
            await self._start_kube()
        if self.first_admin and self.auth:
            await self._invite_first_admin(self.auth)
        diagnostics.started = True

    async def close(self) -> None:
        # Last started, first stopped: nodes and proxies before the auth they talk to.
        for closer in reversed(self._closers):
            try:
                async with asyncio.timeout(SHUTDOWN_STEP_SECONDS):
                    await closer()
            except TimeoutError:
                log.warning("a service took over %ss to stop; moving on", SHUTDOWN_STEP_SECONDS)
            except Exception:
                log.exception("error while shutting down")

    # auth ------------------------------------------------------------------------

    async def _start_auth(self, diagnostics: Diagnostics) -> None:
        cfg = self.config.auth_service
        self.auth_addr = cfg.advertise_addr or dial_addr(cfg.listen_addr, 3025)
        server = await open_auth_server(
            cfg,
            self.data_dir,
            cluster_name=self.config.cluster_name or socket.gethostname(),
            proxy_public_addr=self.config.proxy_service.public_addr,
            auth_addr=self.auth_addr,
            closers=self._closers,
        )
        self.auth = server
        diagnostics.checks.append(lambda: _store_ready(server.backend))

        key_pem, public_key = new_key()
        auth_host, _ = split_addr(self.auth_addr, 3025)
        listen_host, _ = split_addr(cfg.listen_addr, 3025)
        principals = _local_names(self.nodename, auth_host, listen_host)
        own = IdentityFiles(
            key_pem, server.issue_service_identity("auth", "Auth", public_key, principals)
        )

        admin_key, admin_public = new_key()
        admin = IdentityFiles(admin_key, server.issue_admin_identity(admin_public))
        admin_dir = self.data_dir / "admin"
        admin.save(admin_dir)
        # cgctl on this host talks to this auth where it listens, not through the
        # advertised address (a load balancer, which may not take a member's own calls).
        (admin_dir / "auth_addr").write_text(dial_addr(cfg.listen_addr, 3025) + "\n")

        app = auth_app(server, self.metrics, cfg, self.data_dir)
        tls_cas = server.issuer.tls_ca_certs()
        context = auth_tls_context(own.bundle.tls_cert, own.key_pem, tls_cas)
        workers = worker_count(cfg.workers)
        if workers == 1:
            runner = await self._listen(app, cfg.listen_addr, 3025, context, "auth")
        else:
            runner = await self._start_auth_workers(server, own, app, context, workers)
        if self._serves_in_process():
            await self._listen_privately(runner, context)
        log.info("auth service ready for cluster %s", server.cluster_name)

    def _serves_in_process(self) -> bool:
        """Whether a service that talks to auth runs in this process with it."""
        config = self.config
        return (
            config.proxy_service.enabled
            or config.ssh_service.enabled
            or config.kubernetes_service.enabled
        )

    async def _listen_privately(self, runner: web.AppRunner, context: Any) -> None:
        """The auth API once more, on a loopback port of its own for the services in this
        process, with its own connection cap and handshake slots.

        After an auth restart 10,000 returning nodes queue their TLS handshakes on the
        public port; this process's proxy, dialling it too, waited its turn for minutes,
        and auth was not ready (`/readyz` waits for the proxy's first snapshot) until the
        nodes were all back. Nothing else is told this port: it is not advertised, not
        in the workers' shared listener, and asks for the same client certificates.
        """
        sockets = bound_sockets("127.0.0.1", 0)
        site = LimitedSite(runner, self.config.http_limits, sockets, ssl_context=context)
        try:
            await site.start()
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self.private_auth_addr = f"127.0.0.1:{sockets[0].getsockname()[1]}"
        log.info("auth listening for this process's services on %s", self.private_auth_addr)

    async def _start_auth_workers(
        self,
        server: AuthServer,
        own: IdentityFiles,
        app: web.Application,
        context: Any,
        workers: int,
    ) -> web.AppRunner:
        """This process and workers-1 spawned ones serve the auth API on one port."""
        cfg = self.config.auth_service
        host, port = split_addr(cfg.listen_addr, 3025)

        sockets: list[socket.socket] = []
        runners: list[web.AppRunner] = []

        async def listen() -> None:
            check_port_free(host, port)  # SO_REUSEPORT would share a port in use
            sockets.extend(listening_sockets(host, port))
            runners.append(await serve_on(app, sockets, context, self.config.http_limits))
            self._closers.append(runners[0].cleanup)

        await self._guard_listen(listen(), cfg.listen_addr, "auth")
        log.info("auth listening on %s", cfg.listen_addr)
        specs = [
            WorkerSpec(
                index=index,
                data_dir=self.data_dir,
                config=cfg,
                cluster_name=server.cluster_name,
                proxy_public_addr=server.proxy_public_addr,
                auth_addr=server.auth_addr,
                host=host,
                port=sockets[0].getsockname()[1],
                cert_pem=own.bundle.tls_cert,
                key_pem=own.key_pem,
                debug=self.config.debug,
                limits=self.config.http_limits,
            )
            for index in range(1, workers)
        ]
        pool = AuthWorkerPool(specs, self.metrics)
        await pool.start()
        self._closers.append(pool.stop)
        return runners[0]

    # proxy -----------------------------------------------------------------------

    async def _service_identity(
        self, role: str, system_role: str, principals: list[str]
    ) -> IdentityFiles:
        """From the auth in this process, else the saved one, else by joining."""
        directory = self.data_dir / "identity" / role
        if self.auth is not None:
            key_pem, public_key = new_key()
            bundle = self.auth.issue_service_identity(
                f"{self.nodename}", system_role, public_key, principals
            )
            await self.auth.hold_local_name(role, bundle)  # no join may take it over
            identity = IdentityFiles(key_pem, bundle)
            identity.save(directory)
            return identity
        try:
            return IdentityFiles.load(directory)
        except NotFound:
            pass
        if not self.config.auth_servers or not self.config.join_token:
            raise BadParameter(
                f"the {role} service needs --auth-server and --token to join the cluster"
            )
        identity = await join_cluster(
            self.config.auth_servers,
            self.config.join_token,
            self.config.ca_pin,
            role,
            self.nodename,
            principals,
        )
        identity.save(directory)
        return identity

    def _auth_dial(self) -> list[str]:
        """Where this process's services reach auth: its own (on its private listener),
        or every configured one (the client fails over between them)."""
        if self.auth is not None:
            return [self.private_auth_addr or self.auth_addr]
        return self.config.auth_servers

    def _auth_client(self, identity: IdentityFiles) -> AsyncAuthClient:
        urls = [f"https://{addr}" for addr in self._auth_dial()]
        return AsyncAuthClient(urls, identity.tls_context())

    async def _join_service(
        self,
        role: str,
        system_role: str,
        listen_addr: str,
        default_port: int,
        advertise_addr: str,
    ) -> _JoinedService:
        """What the node and the kube service start from: where they listen, the host
        the proxy dials them at (also a name in their certificate), their identity and
        a client to auth on it (closed with the daemon)."""
        host, port = split_addr(listen_addr, default_port)
        advertise_host = (
            split_addr(advertise_addr, port)[0]
            if advertise_addr
            else _reachable_host(host, self.auth_addr or self._auth_dial()[0])
        )
        identity = await self._service_identity(
            role, system_role, _local_names(self.nodename, advertise_host)
        )
        auth = self._auth_client(identity)
        self._closers.append(auth.close)
        return _JoinedService(host, port, advertise_host, identity, auth)

    async def _serve(
        self, service: _JoinedServer, joined: _JoinedService, listen_addr: str, what: str
    ) -> None:
        """Start a node or kube service where `joined` says, closed with the daemon."""
        await self._guard_listen(
            service.start(joined.host, joined.port, joined.advertise_host), listen_addr, what
        )
        self._closers.append(service.close)

    async def _start_proxy(self) -> None:
        cfg = self.config.proxy_service
        public_host, _ = split_addr(cfg.public_addr, 3080)
        identity = await self._service_identity(
            "proxy", SYSTEM_PROXY, _local_names(self.nodename, public_host)
        )
        auth = self._auth_client(identity)
        self._closers.append(auth.close)
        ping = await auth.call("GET", "/v1/ping")
        _, ssh_port = split_addr(cfg.ssh_listen_addr, 3023)
        real_certificate = bool(cfg.tls.cert_file and cfg.tls.key_file)
        kube_addr = ""
        if cfg.kube_listen_addr:
            kube_addr = f"{public_host}:{split_addr(cfg.kube_listen_addr, 3026)[1]}"
        web_proxy = ProxyWeb(
            auth,
            str(ping["cluster_name"]),
            f"{public_host}:{ssh_port}",
            kube_addr,
            real_certificate=real_certificate,
            web_idle_timeout=cfg.web_idle_timeout.total_seconds(),
        )
        app = web_proxy.app()
        app.middlewares.append(self.metrics.middleware("proxy"))
        user_ca = identity.bundle.tls_cas[1:]  # host CA first, then user CA(s)
        if real_certificate:
            try:
                cert_pem = Path(cfg.tls.cert_file).read_text()
                key_pem = Path(cfg.tls.key_file).read_text()
            except OSError as exc:
                raise BadParameter(f"cannot read the proxy's TLS files: {exc}") from exc
        else:
            cert_pem, key_pem = identity.bundle.tls_cert, identity.key_pem
        context = server_context(cert_pem, key_pem, client_cas=user_ca)
        await self._listen(app, cfg.web_listen_addr, 3080, context, "proxy web")

        agentless: AgentlessForwarder | None = None
        monitor: SessionMonitor | None = None

        async def proxy_view_changed(kind: str, name: str, resource: BaseModel | None) -> None:
            if monitor is not None:  # locks end the sessions the proxy serves
                await monitor.on_change(kind, name, resource)
            if agentless is not None:  # node edits renew its fronts
                await agentless.on_change(kind, name, resource)
            if kind == "lock" and resource is not None and web_proxy.access is not None:
                end_locked(web_proxy.web_sessions, web_proxy.access)  # and their terminals

        view = ResourceView(
            auth, ["role", "lock", "node", "cert_authority", "kube_cluster"], proxy_view_changed
        )
        view.start()
        self._closers.append(view.close)
        await view.wait_ready()
        access = CachedAccess(
            view, web_proxy.cluster_name, strict_grace=self.config.strict_lock_grace.total_seconds()
        )
        # The proxy's audit events (jump host, agentless sessions, the web's refusals)
        # wait on disk until auth stored them; ready before the web can refuse anyone
        # by the view (its first refusal is an event), closed after both servers
        # (closers run in reverse).
        audit = AuditSpool(self.data_dir / "proxy" / "audit", post_events(auth), "proxy audit")
        await audit.start()
        self._closers.append(audit.close)
        web_proxy.audit = SpoolSink(audit)
        web_proxy.access = access
        # The sessions this proxy serves itself (agentless nodes; later Kubernetes exec
        # and the web terminal): one registry, one monitor, whatever the protocol.
        registry = SessionRegistry()
        monitor = SessionMonitor(registry, access, server="proxy")
        monitor.start()
        self._closers.append(monitor.close)
        # Sessions of agentless nodes are recorded here, as a node records its own.
        recordings = NodeRecordings(
            self.data_dir / "proxy" / "recordings",
            auth_sender(auth),
            partial(announce_recording, audit.put),
        )
        await recordings.start()
        self._closers.append(recordings.close)

        def end_session(session_id: str, message: str, reason: str) -> bool:
            return agentless is not None and agentless.end_session(session_id, message, reason)

        # Live sessions of agentless nodes are tracked here, as a node tracks its own.
        trackers = SessionTrackerPublisher(auth)
        trackers.start()
        self._closers.append(trackers.close)
        agentless = AgentlessForwarder(
            user_ca_keys=lambda: _ca_keys(view, "user_ssh"),
            host_ca_keys=lambda: _ca_keys(view, "host_ssh"),
            access=access,
            certs=AuthAgentlessCerts(auth),
            audit=audit,
            session_observer=RecordingHook(
                recordings,
                "",
                lambda identity, kind: (
                    access.role_set(identity).options().record_session.mode(kind)
                ),
                end_session,
                audit.put,
            ),
            tracking=TrackedSessions(trackers),
            registry=registry,
        )
        self._closers.append(agentless.close)
        ssh = ProxySSH(
            host_key=identity.key_pem,
            host_cert=identity.bundle.ssh_cert,
            user_ca_keys=lambda: _ca_keys(view, "user_ssh"),
            access=access,
            audit=SpoolSink(audit),
            agentless=agentless,
            live_sessions=lambda node: auth.call("GET", "/v1/sessions", params={"node": node}),
            # `cgsh join` of kubectl exec sessions: a view relayed from their kube service.
            kube_joins=KubeJoins(
                access,
                view,
                lambda session_id: auth.call("GET", f"/v1/sessions/{session_id}"),
                lambda: client_context(
                    identity.bundle.tls_cas, identity.bundle.tls_cert, identity.key_pem
                ),
            ),
            # Jump connections too are cut by the proxy's monitor when a lock comes.
            registry=registry,
        )
        host, port = split_addr(cfg.ssh_listen_addr, 3023)
        await self._guard_listen(ssh.start(host, port), cfg.ssh_listen_addr, "proxy ssh")
        # A wildcard listener answers on loopback too.
        web_proxy.local_ssh_addr = (
            host if host not in ("", "0.0.0.0", "::") else "127.0.0.1",
            port,
        )
        self._closers.append(ssh.close)
        log.info("proxy ssh listening on %s", cfg.ssh_listen_addr)
        if cfg.kube_listen_addr:
            await self._start_kube_listener(
                view, access, identity, cert_pem, key_pem, user_ca, audit
            )

    async def _start_kube_listener(
        self,
        view: ResourceView,
        access: CachedAccess,
        identity: IdentityFiles,
        cert_pem: str,
        key_pem: str,
        user_ca: list[str],
        audit: AuditSpool,
    ) -> None:
        """kubectl's way in (3026): TLS with the user's certificate, on to kube services.
        Its kube.request events go through the proxy's audit spool."""
        cfg = self.config.proxy_service
        listener = KubeListener(
            view,
            access,
            lambda: client_context(
                identity.bundle.tls_cas, identity.bundle.tls_cert, identity.key_pem
            ),
            audit.put,
            local=self._local_servers,
            limits=_http1_limits(self.config.http_limits),
        )
        context = server_context(cert_pem, key_pem, client_cas=user_ca)
        host, port = split_addr(cfg.kube_listen_addr, 3026)
        await self._guard_listen(
            listener.start(host, port, context), cfg.kube_listen_addr, "proxy kube"
        )
        self._closers.append(listener.close)
        log.info("proxy kube listening on %s", cfg.kube_listen_addr)

    # node ------------------------------------------------------------------------

    async def _start_node(self) -> None:
        cfg = self.config.ssh_service
        joined = await self._join_service(
            "node", SYSTEM_NODE, cfg.listen_addr, 3022, cfg.advertise_addr
        )
        agent = NodeAgent(
            self.nodename,
            joined.identity,
            joined.auth,
            cfg.labels,
            cfg.heartbeat_interval,
            strict_grace=self.config.strict_lock_grace.total_seconds(),
            data_dir=self.data_dir / "node",
        )
        await self._serve(agent, joined, cfg.listen_addr, "node ssh")
        log.info(
            "node %s ssh listening on %s (labels %s)", self.nodename, cfg.listen_addr, cfg.labels
        )

    # kube ------------------------------------------------------------------------

    async def _start_kube(self) -> None:
        cfg = self.config.kubernetes_service
        if cfg.kubeconfig_file:
            upstreams = load_kubeconfig(Path(cfg.kubeconfig_file), cfg.kube_cluster_name)
        else:
            upstreams = [in_cluster(cfg.kube_cluster_name)]
        joined = await self._join_service(
            "kube", SYSTEM_KUBE, cfg.listen_addr, 3027, cfg.advertise_addr
        )
        service = KubeService(
            self.nodename,
            joined.identity,
            joined.auth,
            upstreams,
            cfg.labels,
            cfg.heartbeat_interval,
            strict_grace=self.config.strict_lock_grace.total_seconds(),
            data_dir=self.data_dir / "kube",
            local=self._local_servers,
        )
        await self._serve(service, joined, cfg.listen_addr, "kube service")
        log.info(
            "kube service listening on %s for %s",
            cfg.listen_addr,
            ", ".join(u.name for u in upstreams),
        )

    # first admin -----------------------------------------------------------------

    async def _invite_first_admin(self, auth: AuthServer) -> None:
        users = await auth.users.list_all()
        if not users:
            login = os.environ.get("SUDO_USER") or _current_user()
            logins = list(dict.fromkeys([login, "root"])) if login != "root" else ["root"]
            url = await auth.add_user(
                self.first_admin, FIRST_ADMIN_ROLES, {"logins": logins}, created_by="certgate start"
            )
            said = f'First admin user "{self.first_admin}" created (logins: {", ".join(logins)}).'
        else:
            admin = next((u for u in users if u.name == self.first_admin), None)
            if admin is None or admin.status.active:
                return  # the cluster has its people: --first-admin is for an empty one
            # Invited at an earlier start and never signed up (the link lost with that
            # terminal, or expired): `make run` again must not leave them locked out.
            url = await auth.reinvite_user(self.first_admin, by="certgate start")
            said = (
                f'First admin user "{self.first_admin}" has not signed up yet: here is a new '
                "link (earlier ones no longer work)."
            )
        self.announce(
            f"\n{said}\n"
            f"Open this link within 1 hour to set a password and one-time code:\n\n  {url}\n\n"
            f"Then: {self._login_command()}\n"
        )

    def _login_command(self) -> str:
        proxy = self.config.proxy_service
        # The cluster's own certificate is trusted on first use: --insecure, once.
        insecure = "" if proxy.tls.cert_file and proxy.tls.key_file else " --insecure"
        return f"cgsh login --proxy=https://{proxy.public_addr} --user={self.first_admin}{insecure}"

    # listeners -------------------------------------------------------------------

    async def _guard_listen(self, starting: Awaitable[Any], addr: str, name: str) -> None:
        try:
            await starting
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BadParameter(
                    f"cannot listen on {addr} for {name}: the address is already in use"
                ) from exc
            raise BadParameter(f"cannot listen on {addr} for {name}: {exc.strerror}") from exc

    async def _listen(
        self, app: web.Application, addr: str, default_port: int, context: Any, name: str
    ) -> web.AppRunner:
        host, port = split_addr(addr, default_port)
        limits = self.config.http_limits
        runner = await limited_runner(app, limits)

        async def start() -> None:
            sockets = bound_sockets(host or None, port)
            await LimitedSite(runner, limits, sockets, ssl_context=context).start()

        try:
            await self._guard_listen(start(), addr, name)
        except BadParameter:
            await runner.cleanup()
            raise
        self._closers.append(runner.cleanup)
        log.info("%s listening on %s", name, addr)
        return runner


# How long /readyz waits for the store to answer (a balancer's check timeout is longer).
STORE_PROBE_SECONDS = 2.0


async def _store_ready(backend: Backend) -> str | None:
    # A load balancer then sends clients to an auth that sees the others' writes (locks).
    # Checked first: it needs no round trip, so a health check of an auth cut off from
    # its database is answered at once rather than after the probe's timeout.
    if (behind := backend.seconds_behind()) >= BEHIND_UNAVAILABLE:
        return (
            f"store watch {behind:.0f}s behind: writes through other auth instances"
            " (locks) are not reaching this one"
        )
    try:
        async with asyncio.timeout(STORE_PROBE_SECONDS):
            await backend.current_revision()
    except (CertgateError, TimeoutError, OSError) as exc:
        return f"store unreachable: {what_broke(exc)}"
    return None


def _ca_keys(view: ResourceView, ca_type: str) -> list[str]:
    ca = view.get("cert_authority", ca_type)
    return [key.public for key in ca.spec.active_keys] if isinstance(ca, CertAuthority) else []


def _reachable_host(listen_host: str, auth_addr: str) -> str:
    """The address others can dial this host at: the listen address, or for a wildcard
    listener the local address that routes to auth."""
    if listen_host not in ("", "0.0.0.0", "::"):
        return listen_host
    auth_host, _ = split_addr(auth_addr, 3025)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((auth_host, 9))  # UDP connect sends nothing; it picks a route
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _http1_limits(limits: HTTPLimits) -> Http1Limits:
    """`http_limits` for the kube listener (kubectl's 3026), as for the web port."""
    return Http1Limits(
        max_connections=open_files_for(limits.max_connections),
        idle_timeout=limits.idle_timeout.total_seconds(),
        handshake_timeout=limits.handshake_timeout.total_seconds(),
    )


def _local_names(nodename: str, *extra: str) -> list[str]:
    names = [nodename, "localhost", "127.0.0.1", "::1", *extra]
    return [n for n in dict.fromkeys(names) if n and n not in ("0.0.0.0", "::")]


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _check_data_dir(data_dir: Path) -> None:
    try:
        secure_data_dir(data_dir)
        probe = data_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BadParameter(f"cannot write the data dir {data_dir}: {exc.strerror or exc}") from exc
