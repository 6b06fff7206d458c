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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel

from certgate.api.identity import Identity
from certgate.api.lock import Lock, lock_message
from certgate.clock import Clock, SystemClock
from certgate.srv.live import LiveClient
from certgate.srv.registry import SessionRegistry, hang_up

log = logging.getLogger(__name__)

# How often idle time, certificate expiry and the lock view's freshness are checked.
TICK = 0.25
# Clients decided between two yields to the event loop on a periodic check, which must
# not stall the sessions' data path. A lock put decides every client in one go (about
# 10 µs each): yielding there would let the relays of the sessions being cut elsewhere
# (the nodes see the same lock) run ahead of this cut, and a lock is rare.
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
        self._lock_check: asyncio.Task[int] | None = None

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
        stale = self._access.view_is_stale()
        cuts: dict[tuple[str, str], tuple[Cut, list[LiveClient]]] = {}
        for count, client in enumerate(self._registry.clients(), 1):
            if not locks and count % CHUNK == 0:
                await asyncio.sleep(0)
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
        # Every cut first, in one pass (what users see), then every hang-up together:
        # one group's hang-ups (bounded waits for last words) never hold up another's cut.
        victims: list[LiveClient] = []
        counts: list[int] = []
        for cut, clients in cuts.values():
            chosen = set(clients)
            cut_clients, count = self._registry.cut_now(
                chosen.__contains__, cut.message, cut.reason, cut.audit_fields
            )
            victims += cut_clients
            counts.append(count)
        await hang_up(victims)
        for (cut, clients), count in zip(cuts.values(), counts, strict=True):
            log.info(
                "%s: ended %d session(s) of %s",
                cut.reason, count, ", ".join(sorted({c.identity.username for c in clients})),
            )  # fmt: skip
        return sum(counts)

    async def on_change(self, kind: str, name: str, resource: BaseModel | None) -> None:
        """A ResourceView callback: a lock put is checked against every client at once,
        off the watch loop (the cut waits for clients to take the message)."""
        if kind != "lock" or not isinstance(resource, Lock):
            return
        if self._lock_check is None or self._lock_check.done():
            self._lock_check = asyncio.create_task(self.check(), name=f"lock {name}")
            self._lock_check.add_done_callback(_log_failure)
        else:
            # A check is running; it may have read the locks before this one arrived.
            previous = self._lock_check

            async def after() -> int:
                await asyncio.gather(previous, return_exceptions=True)
                return await self.check()

            self._lock_check = asyncio.create_task(after(), name=f"lock {name}")
            self._lock_check.add_done_callback(_log_failure)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._server} session monitor")
            self._task.add_done_callback(_log_failure)

    async def close(self) -> None:
        for task in (self._task, self._lock_check):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(task, return_exceptions=True)
        self._task = self._lock_check = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                await self.check(locks=False)
            except Exception:
                log.exception("session monitor check failed")


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("session monitor task failed", exc_info=task.exception())
