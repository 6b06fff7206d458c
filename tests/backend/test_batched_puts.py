"""Heartbeats are written in batches (services/batched_writer.py): on both backends,
every put keeps its effect and its order, as if each had been its own `put`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.backend.base import Backend, EventType, Item
from certgate.clock import FakeClock
from certgate.errors import BadParameter, ConnectionProblem
from certgate.services.batched_writer import BatchedWriter
from tests.support.postgres import PostgresServer

from .conftest import BackendTarget
from .suite import next_events, watching


@pytest.fixture(params=["sqlite", "postgres"])
def backend_target(request: pytest.FixtureRequest, tmp_path: Path) -> BackendTarget:
    if request.param == "sqlite":
        return BackendTarget({"type": "sqlite", "poll_interval": 0.01}, tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    schema: str = request.getfixturevalue("postgres_schema")
    return BackendTarget(server.storage(schema), tmp_path)


async def test_concurrent_puts_share_transactions_and_keep_every_event_in_order(
    backend: Backend, clock: FakeClock
) -> None:
    writer = BatchedWriter(backend, "test puts")
    soon = clock.now() + timedelta(hours=1)
    # 300 puts at once, node 7 three times: each is its own event, in the order made.
    items = [Item(f"/nodes/n{i:03d}", f"beat {i}".encode(), expires=soon) for i in range(297)]
    items[10:10] = [Item("/nodes/n007", b"second"), Item("/nodes/n007", b"third")]
    items.append(Item("/nodes/n007", b"fourth", expires=soon))
    async with watching(backend, ["/nodes/"]) as events:
        written = await asyncio.gather(*(writer.put(item) for item in items))
        seen = await next_events(events, len(items))
    assert writer.batches < len(items) / 10  # coalesced, not one transaction per put
    assert [(e.type, e.item.key, e.item.value) for e in seen] == [
        (EventType.PUT, item.key, item.value) for item in items
    ]
    revisions = [e.item.revision for e in seen]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(items)
    assert [w.revision for w in written] == revisions
    stored = {item.key: item for item in await backend.range("/nodes/")}
    assert len(stored) == 297
    assert stored["/nodes/n007"].value == b"fourth"  # the last of its four puts
    assert stored["/nodes/n007"].expires == soon
    assert stored["/nodes/n100"].value == b"beat 100"


async def test_a_bad_put_fails_only_its_own_caller(backend: Backend) -> None:
    writer = BatchedWriter(backend, "test puts")
    bad = Item("/nodes/naive", b"x", expires=datetime(2030, 1, 1))  # no timezone: refused
    good = [Item(f"/nodes/g{i}", b"ok") for i in range(5)]
    outcomes = await asyncio.gather(
        *(writer.put(item) for item in [*good[:2], bad, *good[2:]]), return_exceptions=True
    )
    assert isinstance(outcomes[2], BadParameter)
    assert [o.value for o in outcomes if isinstance(o, Item)] == [b"ok"] * 5
    assert len(await backend.range("/nodes/g")) == 5


class CountingWrites:
    """The real backend, counting the write calls the writer makes on it."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.calls: list[str] = []

    async def write_many(self, items: Sequence[Item], create_only: bool) -> list[Item]:
        self.calls.append("write_many")
        return await self._backend.write_many(items, create_only)

    async def put(self, item: Item) -> Item:
        self.calls.append("put")
        return await self._backend.put(item)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


async def test_a_store_that_is_down_fails_the_whole_batch_in_one_attempt(
    backend: Backend,
) -> None:
    # A store that cannot take the batch cannot take its items one by one either:
    # every caller hears of it at once, and the store is not asked again per item
    # (500 more transactions for a PostgreSQL already overloaded).
    counting = CountingWrites(backend)
    writer = BatchedWriter(counting, "test puts")  # type: ignore[arg-type]
    await writer.put(Item("/nodes/first", b"ok"))  # the store answers: one write
    assert counting.calls == ["write_many"]
    await backend.close()  # the store is gone from under the writer
    items = [Item(f"/nodes/n{i}", b"beat") for i in range(50)]
    outcomes = await asyncio.gather(*(writer.put(item) for item in items), return_exceptions=True)
    assert all(isinstance(o, ConnectionProblem) for o in outcomes)
    assert "put" not in counting.calls  # one attempt per batch, no item on its own
    assert counting.calls.count("write_many") == writer.batches


async def test_a_bad_item_still_falls_back_to_one_by_one(backend: Backend) -> None:
    # The fallback stays where one item can be at fault, and shows the count above
    # would have seen per-item writes.
    counting = CountingWrites(backend)
    writer = BatchedWriter(counting, "test puts")  # type: ignore[arg-type]
    bad = Item("/nodes/naive", b"x", expires=datetime(2030, 1, 1))
    items = [Item("/nodes/a", b"ok"), bad, Item("/nodes/b", b"ok")]
    outcomes = await asyncio.gather(*(writer.put(item) for item in items), return_exceptions=True)
    assert isinstance(outcomes[1], BadParameter)
    assert counting.calls.count("put") == 3


async def steady_puts(writer: BatchedWriter, count: int, every: float) -> list[Item]:
    """`count` puts, one every `every` seconds (as heartbeats come), all awaited."""
    pending = []
    for i in range(count):
        pending.append(asyncio.ensure_future(writer.put(Item(f"/nodes/s{i:02d}", b"beat"))))
        await asyncio.sleep(every)
    return await asyncio.gather(*pending)


async def test_steady_puts_wait_for_each_other_and_a_lone_put_does_not_wait(
    backend: Backend,
) -> None:
    # With spacing, puts that come one at a time while busy go together: the first
    # at once, the other 19 in the next batch, a second later. Without it, each
    # round trip took the one or two puts made meanwhile (shown on the same puts).
    async with watching(backend, ["/nodes/"]) as events:
        spaced = BatchedWriter(backend, "test puts", spacing=1.0)
        written = await steady_puts(spaced, 20, 0.01)
        assert spaced.batches == 2
        seen = await next_events(events, 20)
    assert [e.item for e in seen] == written  # each its own event, in order
    eager = BatchedWriter(backend, "test puts")
    await steady_puts(eager, 20, 0.01)
    assert eager.batches > 2
    # After a quiet spell a put is written at once, not a spacing later.
    await asyncio.sleep(1.0)
    started = asyncio.get_running_loop().time()
    await spaced.put(Item("/nodes/lone", b"beat"))
    assert asyncio.get_running_loop().time() - started < 0.5
    assert spaced.batches == 3
