"""The one monitor that ends live sessions, whatever their protocol.

    lock put (watch) ────────────┐
    every TICK seconds ──────────┼──▶ decide(client) for every registered client
                                 │      1 a lock in force for its identity/login/target
                                 │        (every client on a lock put; a new client at
                                 │        its first tick)
                                 │      2 the lock view is stale and a role is strict
                                 │      3 no input for client_idle_timeout
                                 │      4 the certificate it began with has expired
                                 │        (disconnect_expired_cert)
                                 └──▶ registry.cut(client, one-line message, reason)

`decide` is pure (a client and the time in, a Cut or None out), so its rules are
tested with a fake clock; `run` is the loop around it. A node runs one over its own
sessions; the proxy one over the agentless sessions it serves (and, later, Kubernetes
exec and web terminal sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel

from certgate.api.identity import Identity
from certgate.api.lock import Lock, lock_message
from certgate.clock import Clock, SystemClock
from certgate.srv.live import LiveClient
from certgate.srv.registry import SessionRegistry, hang_up
from certgate.tasks import log_failure

log = logging.getLogger(__name__)

# How often idle time, certificate expiry and the lock view's freshness are checked.
TICK = 0.25
# Clients decided between two yields to the event loop on a periodic check, which must
# not stall the sessions' data path. A lock put decides every client in one go (about
# 10 µs each): yielding there would let other work (the relays of the sessions the nodes
# are cutting for the same lock) run ahead of this cut, and a lock is rare.
CHUNK = 100


class LockView(Protocol):
    """What the monitor asks of a cached access checker (access/cached_access.py)."""

    def lock_for(self, identity: Identity, login: str = "", node: str = "") -> Lock | None: ...

    def view_is_stale(self) -> bool: ...

    def strict_and_cut_off(self, identity: Identity) -> bool: ...


@dataclass(frozen=True)
class Cut:
    """Why a client's sessions end: the line its user sees, and the audit reason."""

    message: str
    reason: str
    audit_fields: dict[str, Any] = field(default_factory=dict)


def strict_message(server: str) -> str:
    return (
        f"access denied: locked: this {server} cannot confirm locks with auth, "
        "and your roles require it (locking_mode: strict)"
    )


def _seconds(value: float) -> str:
    delta = timedelta(seconds=round(value))
    if delta < timedelta(minutes=1):
        return f"{delta.seconds}s"
    text = str(delta)  # H:MM:SS
    hours, minutes, seconds = (int(part) for part in text.split(":"))
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n)


def idle_cut(timeout: float) -> Cut:
    return Cut(
        f"certgate: session ended: no input for {_seconds(timeout)} "
        "(client_idle_timeout of your roles)",
        "idle timeout",
        {"idle_timeout": timeout},
    )


def expired_cut(expires: datetime) -> Cut:
    return Cut(
        f"certgate: session ended: your certificate expired at "
        f"{expires.strftime('%Y-%m-%d %H:%M:%S UTC')} (disconnect_expired_cert of your "
        "roles): log in again",
        "certificate expired",
        {"cert_expires": expires.isoformat()},
    )


class SessionMonitor:
    """Cuts the registered clients that a lock, a stale view, idleness or an expired
    certificate rules out. `server` names this process in messages ("node", "proxy")."""

    def __init__(
        self,
        registry: SessionRegistry,
        access: LockView,
        *,
        server: str,
        clock: Clock | None = None,
        tick: float = TICK,
    ) -> None:
        self._registry = registry
        self._access = access
        self._server = server
        self._clock = clock or SystemClock()
        self._tick = tick
        self._task: asyncio.Task[None] | None = None
        # Hang-ups after a lock put's cut, still waiting for clients' last words.
        self._hang_ups: set[asyncio.Task[int]] = set()

    # ---- decisions (no I/O) --------------------------------------------------------

    def decide(self, client: LiveClient, *, stale: bool, locks: bool = True) -> Cut | None:
        """Whether `client` must be cut now, and why (the first rule that applies);
        `locks=False` leaves locks out."""
        lock = (
            self._access.lock_for(client.identity, client.login, client.target) if locks else None
        )
        if lock is not None:
            return Cut(lock_message(lock), "locked", {"lock": lock.name})
        if stale and self._access.strict_and_cut_off(client.identity):
            return Cut(
                strict_message(self._server),
                "locked",
                {"lock": "strict locking: auth unreachable"},
            )
        policy = client.policy
        if policy.idle_timeout is not None and client.idle_for() >= policy.idle_timeout:
            return idle_cut(policy.idle_timeout)
        if policy.expires is not None and self._clock.now() >= policy.expires:
            return expired_cut(policy.expires)
        return None

    # ---- applying them -------------------------------------------------------------

    async def check(self, locks: bool = True) -> int:
        """Cut every client a rule rules out now; how many sessions ended.

        Locks are matched for every client when `locks` (a lock was put), else only for
        clients not yet checked by the monitor: each client is then checked against
        the locks of a moment after it was admitted, and against every later lock put,
        even if a lock arrived while its login was being decided."""
        if locks:
            cut = self._cut_now(self._registry.clients(), locks=True)
        else:
            clients = self._registry.clients()
            cut = _Cutting()
            for start in range(0, len(clients), CHUNK):
                if start:
                    await asyncio.sleep(0)
                cut.add(self._cut_now(clients[start : start + CHUNK], locks=False))
        return await cut.hang_up()

    def _cut_now(self, clients: list[LiveClient], *, locks: bool) -> _Cutting:
        """Decide on `clients` and cut those ruled out, all in this pass of the event loop
        (what users see); the hang-ups are left to the caller."""
        stale = self._access.view_is_stale()
        cuts: dict[tuple[str, str], tuple[Cut, list[LiveClient]]] = {}
        for client in clients:
            if client.cut_reason is not None:
                continue
            try:
                cut = self.decide(client, stale=stale, locks=locks or not client.lock_checked)
                client.lock_checked = True
            except Exception:
                log.exception("session monitor could not decide on %s", client.identity.username)
                continue
            if cut is not None:
                cuts.setdefault((cut.message, cut.reason), (cut, []))[1].append(client)
        cutting = _Cutting()
        for cut, chosen in cuts.values():
            victims, count = self._registry.cut_now(
                set(chosen).__contains__, cut.message, cut.reason, cut.audit_fields
            )
            cutting.victims += victims
            cutting.groups.append((cut.reason, count, chosen))
        return cutting

    async def on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        """A ResourceView callback: a lock put is checked against every client at once,
        and the clients it rules out are cut right here, in the watch event's own pass (a
        millisecond or so for a thousand clients: no task hop, no wait behind a check
        still hanging up others). Their hang-ups (which wait for clients to take the
        message) go to a task, off the watch loop."""
        if kind != "lock" or not isinstance(resource, Lock):
            return
        arrived, cpu = time.monotonic(), time.thread_time()
        cutting = self._cut_now(self._registry.clients(), locks=True)
        if not cutting.victims:
            log.info("lock %s: no client here to cut (monotonic %.6f)", name, arrived)
            return
        cut, cpu = time.monotonic(), time.thread_time() - cpu
        # Monotonic stamps (one clock for every process of a host) let a benchmark or an
        # operator line the stages up across the proxy and the nodes; the CPU time tells
        # a slow cut from a starved one.
        log.info(
            "lock %s: %d client(s) cut in %.1f ms, %.1f ms CPU (monotonic %.6f -> %.6f)",
            name, len(cutting.victims), (cut - arrived) * 1000, cpu * 1000, arrived, cut,
        )  # fmt: skip
        cutting.lock = (name, arrived)
        task = asyncio.create_task(cutting.hang_up(), name=f"lock {name}")
        self._hang_ups.add(task)
        task.add_done_callback(self._hang_ups.discard)
        task.add_done_callback(log_failure(log, "session monitor task"))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._server} session monitor")
            self._task.add_done_callback(log_failure(log, "session monitor task"))

    async def close(self) -> None:
        for task in (self._task, *self._hang_ups):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(task, return_exceptions=True)
        self._task = None
        self._hang_ups.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                await self.check(locks=False)
            except Exception:
                log.exception("session monitor check failed")


@dataclass
class _Cutting:
    """Clients cut in one pass, and what to log once they are hung up."""

    victims: list[LiveClient] = field(default_factory=list)
    groups: list[tuple[str, int, list[LiveClient]]] = field(default_factory=list)
    # Set for a lock put's cut: (the lock's name, when it arrived), to log the hang-up.
    lock: tuple[str, float] | None = None

    def add(self, other: _Cutting) -> None:
        self.victims += other.victims
        self.groups += other.groups

    async def hang_up(self) -> int:
        """Hang every cut client up together; how many sessions the cut ended."""
        await hang_up(self.victims)
        if self.lock is not None:
            name, arrived = self.lock
            done = time.monotonic()
            log.info(
                "lock %s: %d client(s) hung up in %.1f ms (monotonic %.6f)",
                name, len(self.victims), (done - arrived) * 1000, done,
            )  # fmt: skip
        for reason, count, clients in self.groups:
            log.info(
                "%s: ended %d session(s) of %s",
                reason, count, ", ".join(sorted({c.identity.username for c in clients})),
            )  # fmt: skip
        return sum(count for _, count, _ in self.groups)
