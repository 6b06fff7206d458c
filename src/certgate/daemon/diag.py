"""Operators' basics: /healthz (alive), /readyz (store and CAs reachable), /metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from certgate.errors import CertgateError

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "certgate_http_requests_total",
            "HTTP requests served",
            ["service", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "certgate_http_request_seconds",
            "HTTP request latency",
            ["service"],
            registry=self.registry,
        )
        self.logins = Counter(
            "certgate_logins_total", "Successful password logins", registry=self.registry
        )
        self.certs_issued = Counter(
            "certgate_certificates_issued_total",
            "User certificate pairs issued (logins and renewals)",
            registry=self.registry,
        )
        self.errors = Counter(
            "certgate_errors_total", "Refused or failed API calls", ["kind"], registry=self.registry
        )
        self.store_behind = Gauge(
            "certgate_store_watch_behind_seconds",
            "How far auth's watch of its store is behind (0: on schedule; PostgreSQL only)",
            registry=self.registry,
        )
        self.audit_held = Gauge(
            "certgate_audit_events_held",
            "Auth's own audit events kept on its disk because the event store did not take"
            " them (stored once it does)",
            registry=self.registry,
        )

    def middleware(self, service: str) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def count(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            start = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except CertgateError as exc:
                # An outer middleware turns it into its answer (a refused login: 403);
                # count that status, not a server error.
                status = exc.http_status
                raise
            finally:
                self.requests.labels(service=service, status=str(status)).inc()
                self.latency.labels(service=service).observe(time.perf_counter() - start)

        return count


class Diagnostics:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.checks: list[ReadinessCheck] = []
        # Set once every service of this process has started.
        self.started = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.started:
            return web.json_response({"status": "starting"}, status=503)
        for check in self.checks:
            problem = await check()
            if problem:
                return web.json_response({"status": "not ready", "reason": problem}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
