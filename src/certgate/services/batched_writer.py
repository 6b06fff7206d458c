"""Unconditional puts of one hot kind, coalesced into one store transaction per batch.

10,000 nodes heartbeating every 30 s are 333 puts a second, each its own transaction
(a lock on the revision counter, a commit, a round trip to PostgreSQL or the SQLite
thread). Puts made while a batch is being written wait together and go in the next
one, `Backend.write_many` of all of them (group commit): no added delay when auth is
idle, one transaction per round trip when it is busy.

    put(a) ─┐
    put(b) ─┼─► pending ─► writer task: write_many([a, b, c]) ─► each caller's future
    put(c) ─┘

With `spacing`, a batch starts at least that long after the one before: when puts
come steadily (333 heartbeats a second, each round trip a few ms), each batch used to
carry one or two, and every batch costs a transaction, a NOTIFY, a watch feed read
and their round trips. A put after a quiet spell still goes at once; a busy one waits
at most `spacing` for the others to join it.

Every put keeps its own effect and order: items get consecutive revisions in the order
the puts were made, and a key put twice before a write goes in two batches, so watchers
see both events in order.

A batch that fails for want of the store (unreachable, busy, timed out:
`ConnectionProblem`) fails every caller in it at once, with that error; each retries
as it would after a failed put of its own. Writing its items one by one instead, as
was done for every failure, sent 500 more transactions to a store that could not take
one: at 10,000 nodes on an overloaded PostgreSQL, the fallback multiplied the load
that caused it. Any other failure may be one item's (a value the store refuses): the
items are then written one by one, so each caller hears of its own error only.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from certgate.backend.base import Backend, Item
from certgate.errors import ConnectionProblem
from certgate.services.settle import settle
from certgate.tasks import log_failure

log = logging.getLogger("certgate.store")

# Items per transaction: bounds how long one write holds the store's writer lock.
MAX_BATCH = 500


class BatchedWriter:
    def __init__(
        self, backend: Backend, what: str, max_batch: int = MAX_BATCH, spacing: float = 0.0
    ) -> None:
        self._backend = backend
        self._what = what
        self._max_batch = max_batch
        # While busy, a batch starts at least `spacing` seconds after the one before.
        self._spacing = spacing
        self._last_start = float("-inf")
        self._pending: list[tuple[Item, asyncio.Future[Item]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written (for tests and benchmarks)

    async def put(self, item: Item) -> Item:
        """Store `item` (as `Backend.put`), in the next batch; returns it as stored.

        A caller cancelled meanwhile does not unwrite it."""
        done: asyncio.Future[Item] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._writer is None or self._writer.done():
            # An empty context: its writes are for many requests, none of them this
            # caller's alone (backend/write_marks.py).
            self._writer = asyncio.create_task(
                self._write_pending(), name=self._what, context=contextvars.Context()
            )
            self._writer.add_done_callback(log_failure(log, f"{self._what} writer"))
        return await done

    async def close(self) -> None:
        """Wait for the puts already made to be written."""
        if self._writer is not None:
            await asyncio.wait([self._writer])

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Item]]]:
        # Up to the first key seen twice: its second put goes in the next batch, so
        # both are written, in order.
        keys: set[str] = set()
        size = 0
        for item, _ in self._pending[: self._max_batch]:
            if item.key in keys:
                break
            keys.add(item.key)
            size += 1
        batch, self._pending = self._pending[:size], self._pending[size:]
        return batch

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            wait = self._last_start + self._spacing - loop.time()
            if wait > 0:  # busy: let more puts join this batch
                await asyncio.sleep(wait)
            self._last_start = loop.time()
            batch = self._next_batch()
            outcomes = await self._write([item for item, _ in batch])
            self.batches += 1
            settle((done for _, done in batch), outcomes)

    async def _write(self, items: list[Item]) -> list[Item | Exception]:
        try:
            return list(await self._backend.write_many(items, create_only=False))
        except (ConnectionProblem, TimeoutError) as exc:
            return [exc] * len(items)  # the store's failure, not an item's: all hear it
        except Exception as exc:
            if len(items) == 1:
                return [exc]
        # All or none failed, perhaps for one item: one by one, so each caller hears
        # of its own error only.
        outcomes: list[Item | Exception] = []
        for item in items:
            try:
                outcomes.append(await self._backend.put(item))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
