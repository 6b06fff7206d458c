"""Keeping auth's session trackers of one service's live sessions up to date.

    put(tracker) / remove(id)  ── on the event loop, never waits ──▶ queue
    worker: PUT /v1/sessions/{id} | DELETE /v1/sessions/{id}, in order, one at a time
    refresh: every `refresh` seconds every live tracker is sent again, so auth's copy
             (which expires after `ttl`) outlives the session only if this service dies

A failed call is logged and left to the next refresh: trackers are a view for people,
and a slow or absent auth server must never hold a session up.
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


class SessionTrackerPublisher:
    def __init__(
        self,
        auth: AsyncAuthClient,
        ttl: float = TRACKER_TTL_SECONDS,
        refresh: float = REFRESH_SECONDS,
    ) -> None:
        self._auth = auth
        self._ttl = ttl
        self._refresh = refresh
        self._live: dict[str, SessionTracker] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
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
        """Send what is queued (bounded by `flush_seconds`), then stop."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), flush_seconds)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def put(self, tracker: SessionTracker) -> None:
        self._live[tracker.name] = tracker
        self._queue.put_nowait(tracker.name)

    def remove(self, session_id: str) -> None:
        self._live.pop(session_id, None)
        self._queue.put_nowait(session_id)

    def live(self) -> list[SessionTracker]:
        return list(self._live.values())

    async def _send(self, session_id: str) -> None:
        # The latest state wins: a session that ended before its start went out is
        # never registered at all.
        tracker = self._live.get(session_id)
        path = f"/v1/sessions/{session_id}"
        if tracker is None:
            await self._auth.call("DELETE", path)
        else:
            body = {"tracker": to_dict(tracker), "ttl_seconds": self._ttl}
            await self._auth.call("PUT", path, json=body)

    async def _worker(self) -> None:
        while True:
            session_id = await self._queue.get()
            try:
                await asyncio.wait_for(self._send(session_id), CALL_TIMEOUT)
            except (CertgateError, TimeoutError) as exc:
                log.warning("session tracker %s not sent: %s", session_id, exc)
            finally:
                self._queue.task_done()

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            for session_id in list(self._live):
                self._queue.put_nowait(session_id)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())
