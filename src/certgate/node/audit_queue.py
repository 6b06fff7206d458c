"""Audit events of an SSH server, delivered in order by one worker.

Sessions put events on the queue and go on at once; the worker hands them to the
sink (auth's API, through rpc/audit.py) one at a time, each with a timeout, so a slow
or unreachable auth server never stalls a session, and events arrive in the order
they happened. Used by the node's SSH server and by the proxy for agentless nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

AUDIT_TIMEOUT = 10.0

# (event, fields) -> delivered
AuditSink = Callable[[str, dict[str, Any]], Awaitable[None]]


class AuditQueue:
    def __init__(self, sink: AuditSink | None, name: str) -> None:
        self._sink = sink
        self._name = name
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def put(self, event: str, fields: dict[str, Any]) -> None:
        if self._sink is None:
            return
        if self._task is None:
            self._task = asyncio.create_task(self._worker(), name=self._name)
        self._queue.put_nowait((event, fields))

    async def close(self, timeout: float = AUDIT_TIMEOUT) -> None:
        """Deliver what is queued (for at most `timeout`), then stop the worker."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _worker(self) -> None:
        assert self._sink is not None
        while True:
            event, fields = await self._queue.get()
            try:
                await asyncio.wait_for(self._sink(event, fields), AUDIT_TIMEOUT)
            except Exception:
                log.exception("audit sink failed for %s event", event)
            finally:
                self._queue.task_done()
