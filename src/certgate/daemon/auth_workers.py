"""Extra auth API processes (`auth_service.workers`), so issuing certificates uses more
than the one core a Python process can.

    certgate start (main process)                     worker 1 .. N-1 (spawned)
    ─────────────────────────────                     ─────────────────────────
    auth API on HOST:PORT  (SO_REUSEPORT) ◄── kernel ──► auth API on HOST:PORT (SO_REUSEPORT)
    proxy, node, diagnostics                          own store connections (same SQLite
    AuthWorkerPool: spawns, supervises,                 files: multi-process safe), own
      restarts with backoff, adds the                   caches, the auth host certificate
      workers' metrics to its own  ◄──── pipe ────────  metric reports, once a second

Every process runs the whole auth API with every check, on the same store: a worker
is the same auth server, not a shortcut. The kernel spreads new connections over the
listening sockets (SO_REUSEPORT hashes each connection to one of them), so keep-alive
clients are spread too. The workers are spawned, never forked: the main process has
threads (SQLite) that a fork would copy in an unknown state.

A worker stops on SIGTERM or SIGINT, and when the pipe to the main process closes (so
a main process killed outright does not leave workers behind). The main process
waits for every worker to listen before it reports ready, restarts a worker that
exits (backoff with jitter), and stops them all when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from aiohttp import web

from certgate.daemon import event_loop, gc_tuning
from certgate.daemon.auth_service import Closer, auth_app, auth_tls_context, open_auth_server
from certgate.daemon.config import AuthService, HTTPLimits
from certgate.daemon.diag import Metrics
from certgate.daemon.listeners import LimitedSite, bound_sockets, limited_runner
from certgate.daemon.logs import setup_logging
from certgate.errors import BadParameter
from certgate.tasks import log_failure

log = logging.getLogger("certgate.auth.workers")

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 4.0  # within the daemon's 5 s per shutdown step
REPORT_INTERVAL = 1.0
RESTART_BACKOFF_MAX = 30.0
# A worker that ran this long before exiting is restarted without delay growth.
STABLE_AFTER = 60.0
# The Metrics attributes a worker may report on (see MetricsRelay).
RELAYED_METRICS = ("requests", "latency", "logins", "certs_issued", "errors")
# Per metric and label set, the most latency observations one report carries.
MAX_OBSERVATIONS = 100_000


@dataclass(frozen=True)
class WorkerSpec:
    """All a worker needs to serve the auth API; sent to it when it is spawned."""

    index: int
    data_dir: Path
    config: AuthService
    cluster_name: str
    proxy_public_addr: str
    auth_addr: str
    host: str
    port: int
    cert_pem: str
    key_pem: str
    debug: bool
    limits: HTTPLimits


# ---------------------------------------------------------------------------- sockets


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for HOST:PORT with SO_REUSEPORT, so workers share the port."""
    return bound_sockets(host, port, reuse_port=True)


def check_port_free(host: str, port: int) -> None:
    """OSError(EADDRINUSE) if anything listens on HOST:PORT already.

    Binding with SO_REUSEPORT would instead join another process's listener of the
    same user, so the main process probes without it first.
    """
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


async def serve_on(
    app: web.Application, sockets: list[socket.socket], context: Any, limits: HTTPLimits
) -> web.AppRunner:
    """Serve `app` on already-bound sockets; the runner's cleanup stops it."""
    runner = await limited_runner(app, limits)
    try:
        await LimitedSite(runner, limits, sockets, ssl_context=context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


# ---------------------------------------------------------------------------- metrics


class _Relayed:
    """Stands for one metric (or one labelled child) in a worker; records instead."""

    def __init__(self, relay: MetricsRelay, name: str, labels: tuple[tuple[str, str], ...]):
        self._relay = relay
        self._name = name
        self._labels = labels

    def labels(self, **labels: str) -> _Relayed:
        return _Relayed(self._relay, self._name, tuple(sorted(labels.items())))

    def inc(self, amount: float = 1.0) -> None:
        key = (self._name, self._labels)
        self._relay.counts[key] = self._relay.counts.get(key, 0.0) + amount

    def observe(self, value: float) -> None:
        values = self._relay.observations.setdefault((self._name, self._labels), [])
        if len(values) < MAX_OBSERVATIONS:
            values.append(value)


class MetricsRelay:
    """A worker's `Metrics`: what the worker counts is sent to the main process, which
    adds it to the metrics /metrics shows (`apply_report`)."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        for name in RELAYED_METRICS:
            setattr(self.metrics, name, _Relayed(self, name, ()))

    def take_report(self) -> dict[str, Any] | None:
        if not self.counts and not self.observations:
            return None
        report = {"counts": self.counts, "observations": self.observations}
        self.counts, self.observations = {}, {}
        return report


def apply_report(metrics: Metrics, report: dict[str, Any]) -> None:
    """Add a worker's report to the main process's metrics."""
    for (name, labels), amount in report.get("counts", {}).items():
        if name in RELAYED_METRICS:
            metric = getattr(metrics, name)
            (metric.labels(**dict(labels)) if labels else metric).inc(amount)
    for (name, labels), values in report.get("observations", {}).items():
        if name in RELAYED_METRICS:
            metric = getattr(metrics, name)
            child = metric.labels(**dict(labels)) if labels else metric
            for value in values:
                child.observe(value)


# ---------------------------------------------------------------------------- worker side


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    setup_logging(spec.debug)
    try:
        event_loop.run(_run_worker(spec, conn))
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("auth worker %d failed", spec.index)
        raise SystemExit(1) from None
    finally:
        logging.shutdown()


async def _run_worker(spec: WorkerSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def main_process_gone() -> None:
        # The main process never writes: readable means it closed its end (or died).
        loop.remove_reader(conn.fileno())
        stop.set()

    loop.add_reader(conn.fileno(), main_process_gone)

    closers: list[Closer] = []
    try:
        server = await open_auth_server(
            spec.config,
            spec.data_dir,
            cluster_name=spec.cluster_name,
            proxy_public_addr=spec.proxy_public_addr,
            auth_addr=spec.auth_addr,
            closers=closers,
        )  # the main process made the CAs; this reads them
        relay = MetricsRelay()
        app = auth_app(server, relay.metrics, spec.config, spec.data_dir)
        context = auth_tls_context(spec.cert_pem, spec.key_pem, server.issuer.tls_ca_certs())
        runner = await serve_on(app, listening_sockets(spec.host, spec.port), context, spec.limits)
        closers.append(runner.cleanup)
        _send(conn, ("ready", os.getpid()))
        gc_tuning.settle_after_start()
        log.info("auth worker %d serving (pid %d)", spec.index, os.getpid())
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_INTERVAL):
                    await stop.wait()
            report = relay.take_report()
            if report is not None and not _send(conn, ("metrics", report)):
                break
    finally:
        gc_tuning.stop_collecting()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
        for close in reversed(closers):
            try:
                await close()
            except Exception:
                log.exception("auth worker %d: error while shutting down", spec.index)
        conn.close()


def _send(conn: Connection, message: Any) -> bool:
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
        return False  # the main process is gone: the worker stops
    return True


# ---------------------------------------------------------------------------- main side


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    started: float
    ready: asyncio.Future[bool]  # True once it listens; False if it exited before
    exited: asyncio.Future[None]


class AuthWorkerPool:
    """Spawns, supervises and stops the extra auth processes (main process side)."""

    def __init__(self, specs: list[WorkerSpec], metrics: Metrics) -> None:
        self._specs = specs
        self._metrics = metrics
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Spawn every worker and wait until each listens (BadParameter if one fails)."""
        workers = [self._spawn(spec) for spec in self._specs]
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                ready = await asyncio.gather(*(w.ready for w in workers))
        except TimeoutError:
            ready = [w.ready.done() and w.ready.result() for w in workers]
        if not all(ready):
            await self.stop()
            failed = ", ".join(str(w.index) for w, ok in zip(workers, ready, strict=True) if not ok)
            raise BadParameter(f"auth worker(s) {failed} did not start: see the log above")
        for spec in self._specs:
            task = asyncio.create_task(self._supervise(spec), name=f"auth-worker-{spec.index}")
            task.add_done_callback(log_failure(log, "auth worker supervisor"))
            self._supervisors.append(task)
        log.info("%d auth worker process(es) serving", len(self._specs))

    async def stop(self) -> None:
        """SIGTERM every worker, wait for them (then kill what is left)."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        workers = list(self._workers.values())
        for worker in workers:
            if not worker.exited.done():
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
        if workers:
            await asyncio.wait([w.exited for w in workers], timeout=STOP_TIMEOUT)
        for worker in workers:
            # `exited` is set when the worker's end of the sentinel pipe closes, which
            # happens as it exits; join then reaps it.
            if not worker.exited.done():
                log.warning("auth worker %d did not stop in time: killing it", worker.index)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
            await asyncio.to_thread(worker.process.join, 2)
            self._forget(worker)
        self._workers.clear()

    def _spawn(self, spec: WorkerSpec) -> _Worker:
        loop = asyncio.get_running_loop()
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main, args=(spec, theirs), name=f"certgate-auth-{spec.index}"
        )
        process.daemon = True  # and multiprocessing's exit handler reaps it
        process.start()
        theirs.close()
        worker = _Worker(
            spec.index, process, ours, time.monotonic(), loop.create_future(), loop.create_future()
        )
        self._workers[spec.index] = worker
        loop.add_reader(ours.fileno(), self._receive, worker)
        loop.add_reader(process.sentinel, self._exited, worker)
        return worker

    def _receive(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                kind, body = worker.conn.recv()
                if kind == "ready" and not worker.ready.done():
                    worker.ready.set_result(True)
                elif kind == "metrics":
                    apply_report(self._metrics, body)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())

    def _exited(self, worker: _Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        worker.process.join(timeout=0)  # reap it
        if not worker.exited.done():
            worker.exited.set_result(None)
        if not worker.ready.done():
            worker.ready.set_exception(BadParameter(f"auth worker {worker.index} exited at start"))

    async def _supervise(self, spec: WorkerSpec) -> None:
        """Restart the worker whenever it exits, until the pool stops."""
        failures = 0
        while True:
            worker = self._workers[spec.index]
            # Shielded: cancelling this task (stop) must not cancel what stop waits on.
            await asyncio.shield(worker.exited)
            if self._stopping:
                return
            await asyncio.to_thread(worker.process.join, 5)  # reap it; it has exited
            ran = time.monotonic() - worker.started
            failures = 0 if ran > STABLE_AFTER and worker.ready.result() else failures + 1
            delay = min(RESTART_BACKOFF_MAX, 2.0**failures) * random.uniform(0.5, 1.0)
            log.error(
                "auth worker %d exited (code %s); restarting in %.1fs",
                spec.index,
                worker.process.exitcode,
                delay,
            )
            self._forget(worker)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            worker = self._spawn(spec)
            try:
                async with asyncio.timeout(READY_TIMEOUT):
                    if await asyncio.shield(worker.ready):
                        log.info("auth worker %d restarted", spec.index)
            except TimeoutError:
                log.error(
                    "auth worker %d not ready in %.0fs: stopping it", spec.index, READY_TIMEOUT
                )
                worker.process.terminate()  # its exit is handled above, like any other

    def _forget(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(worker.conn.fileno())
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(worker.process.sentinel)
        worker.conn.close()


def worker_count(configured: int) -> int:
    """`auth_service.workers`: 0 means one auth process per core."""
    return configured if configured > 0 else os.cpu_count() or 1
