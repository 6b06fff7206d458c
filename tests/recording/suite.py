"""The compliance suite every `RecordingStore` must pass.

A store's test module subclasses `RecordingStoreSuite` and supplies `store_target`
(see conftest.py); the tests use only the `RecordingStore` protocol and the registry.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from certgate.api.recording import RecordingInfo
from certgate.errors import AlreadyExists, BadParameter, NotFound
from certgate.recording.store import RecordingQuery, RecordingStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

BAD_IDS = [
    "",
    "x",
    "../etc/passwd",
    "..",
    "/tmp/x",
    "a/b",
    "%2e%2e",
    str(uuid.uuid4()).upper(),  # not the canonical form
    str(uuid.uuid1()),  # not a v4
    str(uuid.uuid4()) + "/../x",
    str(uuid.uuid4()) + ".json",
    str(uuid.uuid4()) + "\n",
]


def info(
    *,
    user: str = "alice",
    node: str = "node-1",
    start: datetime = T0,
    recording_id: str | None = None,
    incomplete: bool = False,
) -> RecordingInfo:
    return RecordingInfo(
        id=str(uuid.uuid4()) if recording_id is None else recording_id,
        user=user,
        login="root",
        node=node,
        start=start,
        duration=1.5,
        incomplete=incomplete,
    )


def cast(text: str = "hello") -> bytes:
    return f'{{"version": 2, "width": 80, "height": 24}}\n[0.1, "o", "{text}"]\n'.encode()


async def collect(store: RecordingStore, recording_id: str, chunk_size: int = 64) -> bytes:
    return b"".join([chunk async for chunk in store.stream(recording_id, chunk_size)])


class RecordingStoreSuite:
    # ---- put / get -----------------------------------------------------------------

    async def test_a_usable_store_checks_clean(self, store: RecordingStore) -> None:
        assert await store.check() is None

    async def test_put_then_read_back(self, store: RecordingStore) -> None:
        item = info()
        stored = await store.put(item, cast())
        assert stored.size == len(cast())
        assert stored.model_copy(update={"size": 0}) == item
        assert await store.info(item.id) == stored
        assert await store.get(item.id) == cast()
        assert await collect(store, item.id) == cast()

    async def test_put_from_a_file(self, store: RecordingStore) -> None:
        item = info()
        data = cast("x" * 3_000_000)  # more than one read of the source
        stored = await store.put(item, io.BytesIO(data))
        assert stored.size == len(data)
        assert await store.get(item.id) == data
        assert await collect(store, item.id, 1 << 16) == data

    async def test_a_recording_is_write_once(self, store: RecordingStore) -> None:
        item = info()
        first = await store.put(item, cast("first"))
        # The same file again (a retry after a lost answer) is accepted, as stored.
        assert await store.put(item, cast("first")) == first
        with pytest.raises(AlreadyExists, match="write-once"):
            await store.put(item.model_copy(update={"incomplete": True}), cast("second"))
        assert await store.get(item.id) == cast("first")
        assert await store.info(item.id) == first
        assert len(await store.search(RecordingQuery())) == 1

    async def test_unknown_recording_is_not_found(self, store: RecordingStore) -> None:
        missing = str(uuid.uuid4())
        with pytest.raises(NotFound, match=f'recording "{missing}" not found'):
            await store.info(missing)
        with pytest.raises(NotFound):
            await store.get(missing)
        with pytest.raises(NotFound):
            await collect(store, missing)
        with pytest.raises(NotFound):
            await store.delete(missing)

    @pytest.mark.parametrize("bad", BAD_IDS)
    async def test_invalid_ids_never_reach_storage(self, store: RecordingStore, bad: str) -> None:
        with pytest.raises(BadParameter):
            await store.info(bad)
        with pytest.raises(BadParameter):
            await store.get(bad)
        with pytest.raises(BadParameter):
            await collect(store, bad)
        with pytest.raises(BadParameter):
            await store.delete(bad)
        # model_copy skips validation: the store must check the id itself.
        with pytest.raises(BadParameter):
            await store.put(info().model_copy(update={"id": bad}), cast())

    async def test_delete(self, store: RecordingStore) -> None:
        item = info()
        await store.put(item, cast())
        await store.delete(item.id)
        with pytest.raises(NotFound):
            await store.info(item.id)
        assert await store.search(RecordingQuery()) == []

    # ---- search --------------------------------------------------------------------

    async def test_search_filters_and_orders_newest_first(self, store: RecordingStore) -> None:
        a1 = info(user="alice", node="n1", start=T0)
        a2 = info(user="alice", node="n2", start=T0 + timedelta(minutes=1))
        b1 = info(user="bob", node="n1", start=T0 + timedelta(minutes=2))
        for item in (a1, a2, b1):
            await store.put(item, cast())

        async def ids(**query: object) -> list[str]:
            return [i.id for i in await store.search(RecordingQuery(**query))]  # type: ignore[arg-type]

        assert await ids() == [b1.id, a2.id, a1.id]
        assert await ids(user="alice") == [a2.id, a1.id]
        assert await ids(node="n1") == [b1.id, a1.id]
        assert await ids(user="alice", node="n1") == [a1.id]
        assert await ids(since=T0 + timedelta(minutes=1)) == [b1.id, a2.id]
        assert await ids(until=T0 + timedelta(minutes=1)) == [a1.id]
        assert await ids(limit=2) == [b1.id, a2.id]
        assert await ids(user="carol") == []

    async def test_search_limit_is_checked(self, store: RecordingStore) -> None:
        with pytest.raises(BadParameter):
            await store.search(RecordingQuery(limit=0))

    # ---- several processes ---------------------------------------------------------

    async def test_another_instance_sees_the_same_recordings(
        self, store: RecordingStore, other_store: RecordingStore
    ) -> None:
        item = info()
        await store.put(item, cast())
        assert await other_store.get(item.id) == cast()
        await other_store.delete(item.id)
        with pytest.raises(NotFound):
            await store.info(item.id)

    async def test_concurrent_puts(
        self, store: RecordingStore, other_store: RecordingStore
    ) -> None:
        items = [info(start=T0 + timedelta(seconds=n)) for n in range(20)]
        await asyncio.gather(
            *(
                (store if n % 2 else other_store).put(item, cast(str(n)))
                for n, item in enumerate(items)
            )
        )
        found = await store.search(RecordingQuery())
        assert [i.id for i in found] == [i.id for i in reversed(items)]
        # The same id from two writers at once: one whole file wins, never a mix, and
        # the other is refused.
        same = info()
        outcomes = await asyncio.gather(
            store.put(same, cast("a" * 10_000)),
            other_store.put(same, cast("b" * 10_000)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, AlreadyExists) for o in outcomes) == 1
        assert await store.get(same.id) in (cast("a" * 10_000), cast("b" * 10_000))
