"""The PostgreSQL backend: the compliance suite, plus what only it has (a watch that
survives dropped connections, schema migration, TLS) and the registry that picks it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.backend.base import Item
from certgate.backend.postgres import PostgresBackend, postgres_conninfo
from certgate.backend.registry import open_backend
from certgate.clock import FakeClock
from certgate.errors import BadParameter, CompareFailed, ConnectionProblem, NotFound
from tests.support.postgres import DATABASE, TLS_USER, PostgresServer, running_postgres
from tests.support.tcp_relay import TcpRelay
from tests.support.wait import eventually_async

from .conftest import BackendTarget
from .suite import BackendSuite, assert_quiet, next_events, watching


class TestPostgresBackend(BackendSuite):
    @pytest.fixture
    def backend_target(
        self, postgres_server: PostgresServer, postgres_schema: str, tmp_path: Path
    ) -> BackendTarget:
        return BackendTarget(postgres_server.storage(postgres_schema), tmp_path)


@pytest.fixture
async def pg(
    postgres_server: PostgresServer, postgres_schema: str, clock: FakeClock
) -> AsyncIterator[PostgresBackend]:
    backend = await PostgresBackend.open(
        postgres_server.conninfo(postgres_schema), clock, poll_interval=0.05
    )
    yield backend
    await backend.close()


def terminate_other_connections(server: PostgresServer, schema: str) -> int:
    """What a restarted server or a broken network does to every connection but ours."""
    rows = server.sql(
        schema,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        DATABASE,
    )
    return int(rows[0][0])


async def test_watch_survives_dropped_connections_without_missing_events(
    pg: PostgresBackend, postgres_server: PostgresServer, postgres_schema: str
) -> None:
    # Every connection is cut (the LISTEN one too) while a writer keeps writing: the
    # watch re-reads from its last revision, so nothing is lost and nothing repeats.
    other = await PostgresBackend.open(postgres_server.conninfo(postgres_schema))
    try:
        async with watching(pg, ["/w/"]) as events:
            written = [await other.put(Item(f"/w/{n:02d}", b"v")) for n in range(5)]
            assert [e.item for e in await next_events(events, 5)] == written
            assert terminate_other_connections(postgres_server, postgres_schema) >= 2
            for n in range(5, 20):
                try:
                    written.append(await other.put(Item(f"/w/{n:02d}", b"v")))
                except ConnectionProblem:  # the writer's own pooled connection was cut
                    written.append(await other.put(Item(f"/w/{n:02d}", b"v")))
            got = await next_events(events, 15)
            assert [e.item for e in got] == written[5:]
            await assert_quiet(events)
    finally:
        await other.close()


async def test_a_pooled_connection_the_server_ended_is_replaced_before_use(
    pg: PostgresBackend, postgres_server: PostgresServer, postgres_schema: str
) -> None:
    # The pool's check is no round trip per checkout, but a connection the server has
    # ended (it says so, then closes) is still found and replaced: no write fails.
    await pg.put(Item("/t/before", b"v"))  # its connection back in the pool, idle
    others = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    ended = [pid for (pid,) in postgres_server.sql(postgres_schema, others, DATABASE)]
    assert terminate_other_connections(postgres_server, postgres_schema) >= 1
    deadline = asyncio.get_running_loop().time() + 10
    while set(ended) & {pid for (pid,) in postgres_server.sql(postgres_schema, others, DATABASE)}:
        assert asyncio.get_running_loop().time() < deadline  # until every one has exited
        await asyncio.sleep(0.05)
    for n in range(3):
        assert (await pg.put(Item(f"/t/after-{n}", b"v"))).value == b"v"
    assert [i.key for i in await pg.range("/t/")] == [
        "/t/after-0", "/t/after-1", "/t/after-2", "/t/before"
    ]  # fmt: skip


async def test_a_write_without_notify_is_still_delivered(
    pg: PostgresBackend, postgres_server: PostgresServer, postgres_schema: str
) -> None:
    # NOTIFY is only the wake-up: an event whose notification never comes (here the
    # revision is written by hand, as a lost notification would leave it) still arrives.
    async with watching(pg, ["/n/"]) as events:
        seen = await pg.put(Item("/n/first", b"v"))
        assert [e.item for e in await next_events(events, 1)] == [seen]
        revision = seen.revision + 1
        postgres_server.sql(
            postgres_schema,
            "WITH e AS (INSERT INTO certgate_events (revision, key, type, value, created)"
            " VALUES (%s, '/n/quiet', 'put', 'x', now()))"
            " UPDATE certgate_meta SET value = %s WHERE name = 'revision'",
            revision,
            revision,
        )
        [event] = await next_events(events, 1)
        assert (event.item.key, event.item.revision) == ("/n/quiet", revision)


async def test_a_watcher_behind_the_buffer_reads_the_log(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    backend = await PostgresBackend.open(
        postgres_server.conninfo(postgres_schema), poll_interval=0.05, buffer_events=5
    )
    try:
        written = [await backend.put(Item(f"/b/{n:02d}", b"v")) for n in range(40)]
        async with watching(backend, ["/b/"], written[0].revision) as events:
            got = await next_events(events, 39)
            assert [e.item for e in got] == written[1:]
            later = await backend.put(Item("/b/later", b"v"))
            assert [e.item for e in await next_events(events, 1)] == [later]
    finally:
        await backend.close()


async def test_compacted_history_tells_the_watcher_to_reload(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    conninfo = postgres_server.conninfo(postgres_schema)
    writer = await PostgresBackend.open(conninfo, poll_interval=0.05, max_events=5)
    try:
        written = [await writer.put(Item(f"/k/{n}", b"v")) for n in range(12)]
        assert await writer.compact() == 7
    finally:
        await writer.close()
    # An instance that never saw those events (its feed starts at the head) must read
    # the log for them: what is left is delivered, what was compacted means "reload".
    backend = await PostgresBackend.open(conninfo, poll_interval=0.05)
    try:
        async with watching(backend, ["/k/"], written[6].revision) as events:
            assert [e.item for e in await next_events(events, 5)] == written[7:]
        with pytest.raises(CompareFailed):
            async with watching(backend, ["/k/"], written[5].revision) as events:
                await anext(events)
        assert len(await backend.range("/k/")) == 12
    finally:
        await backend.close()


async def test_expiry_is_reaped_once_by_several_instances(
    pg: PostgresBackend, postgres_server: PostgresServer, postgres_schema: str, clock: FakeClock
) -> None:
    others = [
        await PostgresBackend.open(
            postgres_server.conninfo(postgres_schema), clock, poll_interval=0.02
        )
        for _ in range(3)
    ]
    try:
        for n in range(20):
            await pg.put(Item(f"/e/{n}", b"v", expires=clock.now() + timedelta(seconds=5)))
        async with watching(pg, ["/e/"]) as events:
            clock.advance(timedelta(seconds=6))
            got = await next_events(events, 20)
            assert sorted(e.item.key for e in got) == sorted(f"/e/{n}" for n in range(20))
            await assert_quiet(events)
    finally:
        for other in others:
            await other.close()


async def test_schema_is_migrated_once_and_a_newer_one_is_refused(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    conninfo = postgres_server.conninfo(postgres_schema)
    opened = await asyncio.gather(*(PostgresBackend.open(conninfo) for _ in range(4)))
    for backend in opened:
        await backend.close()
    assert postgres_server.sql(
        postgres_schema, "SELECT version FROM certgate_schema WHERE component = 'kv'"
    ) == [(1,)]
    postgres_server.sql(
        postgres_schema, "UPDATE certgate_schema SET version = 99 WHERE component = 'kv'"
    )
    with pytest.raises(BadParameter, match="newer than this certgate"):
        await PostgresBackend.open(conninfo)


async def test_tls_with_a_client_certificate(
    postgres_server: PostgresServer, postgres_schema: str, tmp_path: Path
) -> None:
    tls = postgres_server.tls
    storage = {
        "type": "postgres",
        "conn_string": postgres_server.conninfo(postgres_schema, user=TLS_USER),
        "tls": {
            "ca_file": str(tls.ca),
            "cert_file": str(tls.client_cert),
            "key_file": str(tls.client_key),
        },
    }
    backend = await open_backend(storage, tmp_path)
    try:
        await backend.put(Item("/tls", b"v"))
        rows = postgres_server.sql(
            postgres_schema,
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)"
            " WHERE ssl AND usename = %s",
            TLS_USER,
        )
        assert rows[0][0] >= 1
    finally:
        await backend.close()
    # A server whose certificate does not chain to the configured CA is refused, in one line.
    wrong = {**storage, "tls": {**storage["tls"], "ca_file": str(tls.other_ca)}}  # type: ignore[dict-item]
    with pytest.raises(ConnectionProblem, match="certificate") as refused:
        await open_backend(wrong, tmp_path)
    assert "\n" not in str(refused.value)
    # Without TLS that user is turned away by the server.
    plain = {**storage, "tls": {}}
    with pytest.raises(ConnectionProblem):
        await open_backend(plain, tmp_path)


async def test_unreachable_store_is_one_line(tmp_path: Path) -> None:
    from tests.support.net import free_port

    storage = {"type": "postgres", "conn_string": f"host=127.0.0.1 port={free_port()} user=x"}
    with pytest.raises(ConnectionProblem, match="cannot reach the postgres store") as refused:
        await open_backend(storage, tmp_path)
    assert "\n" not in str(refused.value)


def test_conninfo_takes_the_tls_files() -> None:
    info = postgres_conninfo("postgresql://certgate@db/certgate", ca_file="/ca.pem")
    assert "sslrootcert=/ca.pem" in info and "sslmode=verify-full" in info
    with pytest.raises(BadParameter, match="needs conn_string"):
        postgres_conninfo("")
    with pytest.raises(BadParameter, match="not valid"):
        postgres_conninfo("host=a bogus_option=1")


async def test_a_watch_never_skips_a_revision_under_mixed_writers(
    pg: PostgresBackend, postgres_server: PostgresServer, postgres_schema: str
) -> None:
    # Puts (one statement) and creates, swaps and deletes (transactions) from three
    # instances at once: every revision is taken under the counter's lock, so the watch
    # sees each revision exactly once, consecutively, with no gap where a slower
    # transaction would commit after a newer one had been read.
    conninfo = postgres_server.conninfo(postgres_schema)
    writers = [pg, *[await PostgresBackend.open(conninfo) for _ in range(2)]]
    try:
        start = await pg.current_revision()

        async def work(writer: PostgresBackend, n: int) -> int:
            key = f"/m/{n % 7}"
            try:
                if n % 4 == 0:
                    await writer.create(Item(f"/m/new-{n}", b"c"))
                elif n % 4 == 1:
                    current = await writer.get(key)
                    await writer.compare_and_swap(Item(key, b"s"), current.revision)
                elif n % 4 == 2:
                    await writer.delete(key)
                else:
                    await writer.put(Item(key, b"p"))
            except (CompareFailed, NotFound):
                return 0
            return 1

        async with watching(pg, ["/m/"], start) as events:
            done = await asyncio.gather(*(work(writers[n % 3], n) for n in range(300)))
            got = await next_events(events, sum(done))
            assert [e.item.revision for e in got] == list(range(start + 1, start + 1 + sum(done)))
            await assert_quiet(events)
    finally:
        for writer in writers[1:]:
            await writer.close()


async def test_watch_resumes_after_the_server_restarts() -> None:
    # A real restart, on a server of its own (the session's keeps running): every
    # connection drops at once; the watch reconnects and goes on from its last revision.
    with running_postgres() as server:
        backend = await PostgresBackend.open(server.conninfo("public"), poll_interval=0.05)
        try:
            async with watching(backend, ["/r/"]) as events:
                before = await backend.put(Item("/r/before", b"v"))
                assert [e.item for e in await next_events(events, 1)] == [before]
                await asyncio.to_thread(server.restart)
                after = [await retrying(backend, Item(f"/r/after-{n}", b"v")) for n in range(5)]
                assert [e.item for e in await next_events(events, 5)] == after
                await assert_quiet(events)
        finally:
            await backend.close()


async def retrying(backend: PostgresBackend, item: Item) -> Item:
    """put, again while the pool reconnects (a write on a dropped connection fails)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            return await backend.put(item)
        except ConnectionProblem:
            assert asyncio.get_running_loop().time() < deadline, "the pool never reconnected"
            await asyncio.sleep(0.1)


async def test_cut_off_from_the_database_it_says_it_is_behind_until_it_reads_again(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    # An auth whose network to the database fails goes on serving its watchers from
    # what it read last; a lock written meanwhile through another auth is missing. It
    # must say so (seconds_behind), until it has read the store through again.
    own = postgres_server.conninfo(postgres_schema)
    with TcpRelay(postgres_server.port) as relay:
        backend = await PostgresBackend.open(
            own.replace(f"port={postgres_server.port}", f"port={relay.port}"),
            poll_interval=0.05,
            pool_timeout=0.5,
        )
        other = await PostgresBackend.open(own, poll_interval=0.05)
        try:
            async with watching(backend, ["/locks/"]) as events:
                arrival = asyncio.ensure_future(anext(events))
                assert backend.seconds_behind() == 0
                relay.cut()
                written = await other.put(Item("/locks/from-the-other-auth", b"v"))
                await asyncio.sleep(2)  # past two poll intervals and the slack
                assert backend.seconds_behind() > 1
                assert not await backend.catch_up(0.5)
                assert not arrival.done()
                relay.heal()
                # The pool's next try at a connection may be seconds away.
                assert await backend.catch_up(15)
                assert backend.seconds_behind() == 0
                # Watchers woken by that read ran before catch_up returned.
                assert arrival.done() and arrival.result().item == written
        finally:
            await backend.close()
            await other.close()


async def test_catch_up_does_not_wait_out_the_feeds_backoff(
    pg: PostgresBackend,
    postgres_server: PostgresServer,
    postgres_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The feed's reads fail for a while and its retries space out (its query alone is
    # refused here, so the pool's own retries are not in play). Once the store answers
    # again, a lock check's catch_up has it read at once, not after the backoff.
    read_log = pg._read_log

    async def refused(*args: Any) -> Any:
        raise ConnectionProblem("the database refuses (test)")

    retry = re.compile(r"watch feed failed, again in (\d+\.\d)s")

    def next_retry() -> float:
        found = [float(m[1]) for r in caplog.records if (m := retry.search(r.getMessage()))]
        return found[-1] if found else 0.0

    other = await PostgresBackend.open(postgres_server.conninfo(postgres_schema))
    try:
        async with watching(pg, ["/locks/"]) as events:
            arrival = asyncio.ensure_future(anext(events))
            monkeypatch.setattr(pg, "_read_log", refused)
            await eventually_async(lambda: next_retry() >= 2, timeout=30)
            monkeypatch.setattr(pg, "_read_log", read_log)
            written = await other.put(Item("/locks/from-the-other-auth", b"v"))
            started = asyncio.get_running_loop().time()
            assert await pg.catch_up(15)
            waited = asyncio.get_running_loop().time() - started
            assert arrival.done() and arrival.result().item == written
            assert waited < 1, f"catch_up took {waited:.1f}s of a {next_retry()}s backoff"
    finally:
        await other.close()
