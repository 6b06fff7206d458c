"""Keeping auth's session trackers of one service's live sessions up to date.

    put(tracker) / remove(id)  ── on the event loop, never waits ──▶ pending ids (a set)
    worker: one POST /v1/sessions per pass with every pending change:
            {"put": [the latest tracker of each live id], "delete": [ended ids]}
    refresh: every `refresh` seconds every live tracker is sent again, so auth's copy
             (which expires after `ttl`) outlives the session only if this service dies

Changes are coalesced: a session that starts and ends while the worker is busy costs
nothing, and a burst of sessions is a few calls, not two per session. With
`min_interval` a call starts at most that often (the first change after a quiet spell
goes at once): a busy service sends one call per interval, a tracker up to that late.
An id is deleted only if it was registered. A failed call is logged and left to the next refresh:
trackers are a view for people, and a slow or absent auth server must never hold a
session up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from certgate.api.codec import to_dict
from certgate.api.session_tracker import SessionTracker
from certgate.errors import CertgateError
from certgate.rpc.auth_client import AsyncAuthClient

log = logging.getLogger("certgate.sessions")

TRACKER_TTL_SECONDS = 30.0
REFRESH_SECONDS = 10.0
CALL_TIMEOUT = 10.0
# The most changes one call carries (auth accepts 1000 of each kind).
BATCH = 500


class SessionTrackerPublisher:
    def __init__(
        self,
        auth: AsyncAuthClient,
        ttl: float = TRACKER_TTL_SECONDS,
        refresh: float = REFRESH_SECONDS,
        min_interval: float = 0.0,
    ) -> None:
        self._auth = auth
        self._min_interval = min_interval
        self._ttl = ttl
        self._refresh = refresh
        self._live: dict[str, SessionTracker] = {}
        self._registered: set[str] = set()  # ids auth has (or may have) from us
        self._pending: dict[str, None] = {}  # ids with a change to send, in order
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._worker(), name="session trackers"),
                asyncio.create_task(self._refresher(), name="session tracker refresh"),
            ]
            for task in self._tasks:
                task.add_done_callback(_log_crash)

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Send what is pending (bounded by `flush_seconds`), then stop."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_seconds):
                    await self.flushed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def flushed(self) -> None:
        """Until nothing is pending and no call is under way."""
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    def put(self, tracker: SessionTracker) -> None:
        self._live[tracker.name] = tracker
        self._mark(tracker.name)

    def remove(self, session_id: str) -> None:
        self._live.pop(session_id, None)
        self._mark(session_id)

    def _mark(self, session_id: str) -> None:
        self._pending[session_id] = None
        self._idle.clear()
        self._wake.set()

    async def _send(self, ids: list[str]) -> None:
        # The latest state of each id wins.
        puts = [self._live[i] for i in ids if i in self._live]
        deletes = [i for i in ids if i not in self._live and i in self._registered]
        if not puts and not deletes:
            return
        # Registered before the call: if the answer is lost, the put may still have
        # landed, and a later delete must go out.
        self._registered.update(t.name for t in puts)
        body = {
            "put": [to_dict(t) for t in puts],
            "delete": deletes,
            "ttl_seconds": self._ttl,
        }
        try:
            await self._auth.call("POST", "/v1/sessions", json=body)
        finally:
            # Sent or not, a delete is not retried: the tracker expires on its own.
            self._registered.difference_update(deletes)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        last_call = -self._min_interval
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = last_call + self._min_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # busy: what changes meanwhile goes along
            last_call = loop.time()
            ids = list(self._pending)[:BATCH]
            for session_id in ids:
                del self._pending[session_id]
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    await self._send(ids)
            except (CertgateError, TimeoutError) as exc:
                # Live trackers go out again with the next refresh; an unsent delete
                # is left to expire.
                reason = (
                    f"auth did not answer within {CALL_TIMEOUT:g}s"
                    if isinstance(exc, TimeoutError)
                    else str(exc)
                )
                log.warning("%d session tracker change(s) not sent: %s", len(ids), reason)

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            for session_id in list(self._live):
                self._mark(session_id)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())
