"""Where the session layer puts its audit events: an `AuditWriter`.

Sessions call `put(event, fields)` and go on at once; a writer delivers the events in
the order they were put, and never makes a session wait. Two writers:

- `rpc/audit_spool.py` `AuditSpool`, what nodes and proxies run: durable, on disk
  until auth has stored each event (survives an auth restart and a `kill -9`);
- `MemoryAuditQueue` here: events in memory, handed to a sink callable by one worker,
  each call with a timeout; whatever is queued is lost with the process. For servers
  embedded in tests, and the benchmark's baseline (bench/audit_durability.py).

`audit_writer()` lets a server take either a writer or a plain sink callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

AUDIT_TIMEOUT = 10.0

# (event, fields) -> delivered
AuditSink = Callable[[str, dict[str, Any]], Awaitable[None]]
# [(event, fields), ...] -> all delivered, in order
BatchSink = Callable[[list[tuple[str, dict[str, Any]]]], Awaitable[None]]
# The most events one batch carries.
MAX_BATCH = 500


@runtime_checkable
class AuditWriter(Protocol):
    def put(self, event: str, fields: dict[str, Any]) -> None:
        """Take one event; never blocks, never raises for delivery problems."""
        ...

    async def close(self) -> None:
        """Deliver what can be delivered shortly, then stop."""
        ...


def audit_writer(
    audit: AuditWriter | AuditSink | None, name: str, batch: BatchSink | None = None
) -> AuditWriter:
    """`audit` itself if it is a writer, else a memory queue in front of the sink."""
    if isinstance(audit, AuditWriter):
        return audit
    return MemoryAuditQueue(audit, name, batch)


class MemoryAuditQueue:
    """With a `batch` sink, the worker sends everything queued so far in one call (a
    burst of sessions is a few calls, not one per event); else one event at a time."""

    def __init__(
        self,
        sink: AuditSink | None,
        name: str,
        batch: BatchSink | None = None,
        linger: float = 0.0,
    ) -> None:
        self._sink = sink
        self._batch = batch
        # With a batch sink: how long the worker waits after the first event for more,
        # so a stream of events (an API call each) costs auth one write per batch.
        self._linger = linger
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
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._queue.join()
        finally:
            # Also when this close is itself cancelled (a shutdown step ran out of time):
            # a worker left running would fail on a closed client for every event left.
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _worker(self) -> None:
        assert self._sink is not None
        while True:
            batch = [await self._queue.get()]
            if self._linger and self._batch is not None:
                await asyncio.sleep(self._linger)
            while self._batch is not None and len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with asyncio.timeout(AUDIT_TIMEOUT):
                    if self._batch is not None:
                        await self._batch(batch)
                    else:
                        await self._sink(*batch[0])
            except Exception:
                log.exception("audit sink failed for %s", ", ".join(e for e, _ in batch))
            finally:
                for _ in batch:
                    self._queue.task_done()
