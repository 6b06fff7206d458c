"""AuditSpool: events on disk until auth acknowledged them, in order, each stored once.

Auth here is a small stand-in that stores what it is sent by id, as the real event
store does (uid unique); the real path is exercised end to end by
tests/integration/test_audit_trail_survives_outages.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from certgate.errors import AccessDenied, ConnectionProblem
from certgate.rpc.audit_spool import FRESH_EVENTS, AuditSpool


class _Auth:
    """Stores events by id, in the order first received; can be down, slow or picky."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.sent_ids: list[str] = []
        self.down = False
        self.lose_answer = 0  # store the next N batches, then fail as if the answer was lost
        self.refuse: set[str] = set()  # event types refused (the whole call, like auth)
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, records: list[dict[str, Any]]) -> None:
        await self.gate.wait()
        self.sent_ids += [r["id"] for r in records]
        if self.down:
            raise ConnectionProblem("cannot reach auth")
        refused = [r["event"] for r in records if r["event"] in self.refuse]
        if refused:
            raise AccessDenied(f"access denied: may not write {refused[0]}")
        for record in records:
            self.stored.setdefault(record["id"], record)
        if self.lose_answer:
            self.lose_answer -= 1
            raise ConnectionProblem("answer lost")

    def numbers(self) -> list[int]:
        return [r["fields"]["n"] for r in self.stored.values()]


async def until(check: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def delivered(spool: AuditSpool) -> bool:
    """Everything put has reached auth (or was set aside). `backlog` alone reads 0 while the
    writer holds a batch on its way to disk, so that is checked too."""
    return spool.backlog == 0 and not spool._writing


async def _sent_one_by_one(tmp_path: Path, auth: _Auth, count: int) -> AuditSpool:
    """A started spool that has delivered `count` events, each in a call of its own
    (the cursor is saved at most once a second, so it may lag behind them)."""
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    for n in range(count):
        spool.put("exec", {"n": n})
        await until(lambda: delivered(spool))
    return spool


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


async def test_events_arrive_once_in_order_and_acknowledged_segments_are_deleted(
    tmp_path: Path,
) -> None:
    auth = _Auth()
    spool = AuditSpool(tmp_path, auth, segment_bytes=2000)  # a new segment every ~15 events
    await spool.start()
    for n in range(300):
        spool.put("exec", {"n": n, "user": "alice"})
        if n % 50 == 0:
            await asyncio.sleep(0)
    await until(lambda: len(auth.stored) == 300)
    assert auth.numbers() == list(range(300))
    await until(lambda: delivered(spool))
    # Sealed segments were deleted once sent; only the active one is left.
    await until(lambda: len(segments(tmp_path)) == 1)
    await spool.close()


async def test_while_auth_is_away_events_wait_on_disk_then_arrive_in_order(
    tmp_path: Path,
) -> None:
    auth = _Auth()
    auth.down = True
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    for n in range(100):
        spool.put("session.start", {"n": n})
    await until(lambda: len(set(auth.sent_ids)) >= 100)  # each tried, none stored: kept
    lines = [line for path in segments(tmp_path) for line in path.read_bytes().splitlines()]
    on_disk = [json.loads(line) for line in lines]
    assert [r["fields"]["n"] for r in on_disk] == list(range(100))
    assert not auth.stored
    auth.down = False
    # The next retry comes within the backoff's cap (10 s, with jitter).
    await until(lambda: len(auth.stored) == 100, timeout=30)
    assert auth.numbers() == list(range(100))
    await spool.close()


async def test_a_restart_sends_what_the_last_run_left_with_the_same_ids(tmp_path: Path) -> None:
    auth = _Auth()
    auth.down = True
    first = AuditSpool(tmp_path, auth)
    await first.start()
    for n in range(50):
        first.put("session.end", {"n": n})
    await until(lambda: len(set(auth.sent_ids)) >= 50)
    await asyncio.wait_for(first.close(), 5)  # auth is away: close does not wait for it
    tried = list(dict.fromkeys(auth.sent_ids))

    auth.down = False
    second = AuditSpool(tmp_path, auth)
    await second.start()
    await until(lambda: len(auth.stored) == 50)
    assert auth.numbers() == list(range(50))
    assert list(auth.stored) == tried  # the same events, not copies with new ids
    await second.close()


async def test_after_a_crash_whole_lines_are_sent_and_a_torn_one_is_dropped(
    tmp_path: Path,
) -> None:
    auth = _Auth()
    auth.down = True
    crashed = AuditSpool(tmp_path, auth)
    await crashed.start()
    for n in range(20):
        crashed.put("exec", {"n": n})
    await until(lambda: crashed.backlog > 0 and not crashed._buffer and not crashed._writing)
    # kill -9: no close; the process dies with a write half done.
    for task in crashed._tasks:
        task.cancel()
    with segments(tmp_path)[-1].open("ab") as file:
        file.write(b'{"id":"torn","event":"exec","fie')

    auth.down = False
    restarted = AuditSpool(tmp_path, auth)
    await restarted.start()
    await until(lambda: len(auth.stored) == 20)
    assert auth.numbers() == list(range(20))
    assert "torn" not in auth.stored
    restarted.put("exec", {"n": 20})  # new events go on after the recovered ones
    await until(lambda: len(auth.stored) == 21)
    assert auth.numbers() == list(range(21))
    await restarted.close()


async def test_a_batch_whose_answer_was_lost_is_resent_and_stored_once(tmp_path: Path) -> None:
    auth = _Auth()
    auth.lose_answer = 1
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    for n in range(10):
        spool.put("exec", {"n": n})
    # backlog is 0 also before the writer took the events: wait for them at auth too.
    await until(lambda: len(auth.numbers()) == 10 and delivered(spool))
    # The same ids went twice (the first answer was lost), and were stored once.
    assert len(auth.sent_ids) > len(set(auth.sent_ids))
    assert auth.numbers() == list(range(10))
    await spool.close()


async def test_an_event_auth_refuses_is_set_aside_and_the_others_delivered(
    tmp_path: Path,
) -> None:
    auth = _Auth()
    auth.refuse = {"user.delete"}
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    spool.put("exec", {"n": 0})
    spool.put("user.delete", {"n": 1})
    spool.put("exec", {"n": 2})
    await until(lambda: delivered(spool))
    assert auth.numbers() == [0, 2]
    refused = [json.loads(line) for line in (tmp_path / "refused.jsonl").read_text().splitlines()]
    assert [r["record"]["event"] for r in refused] == ["user.delete"]
    assert "may not write" in refused[0]["refused"]
    await spool.close()


async def test_put_never_waits_for_auth(tmp_path: Path) -> None:
    auth = _Auth()
    auth.gate.clear()  # auth takes the call and never answers
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    spool.put("exec", {"n": 0})
    await until(lambda: spool.backlog > 0 and not spool._buffer and not spool._writing)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(1, 2001):
        spool.put("exec", {"n": n})
    # No I/O in put: with auth not answering, a put that waited on it would never return.
    # The bound is generous for a loaded machine (speed itself is measured in bench/).
    assert loop.time() - started < 5.0
    auth.gate.set()
    await until(lambda: len(auth.stored) == 2001)
    assert auth.numbers() == list(range(2001))
    await spool.close()


async def test_an_oversized_event_is_cut_before_it_is_spooled(tmp_path: Path) -> None:
    size = 100_000
    auth = _Auth()
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    spool.put("exec", {"n": 0, "command": "x" * size})
    await until(lambda: len(auth.stored) == 1)
    (record,) = auth.stored.values()
    assert len(record["fields"]["command"]) < size
    assert "command" in record["fields"]["truncated"]
    await spool.close()


async def test_an_event_that_cannot_be_sent_is_set_aside(tmp_path: Path) -> None:
    auth = _Auth()
    spool = AuditSpool(tmp_path, auth)
    await spool.start()

    async def strict_json(records: list[dict[str, Any]]) -> None:
        json.dumps(records, allow_nan=False)  # as the HTTP client encodes a body
        await auth(records)

    spool._send = strict_json
    spool.put("exec", {"n": 0})
    spool.put("exec", {"n": 1, "duration": float("nan")})
    spool.put("exec", {"n": 2})
    await until(lambda: delivered(spool))
    assert auth.numbers() == [0, 2]
    await spool.close()


async def test_a_value_json_has_no_type_for_arrives_as_its_text(tmp_path: Path) -> None:
    # What was just written is sent from memory: it must be what reading it back gives.
    auth = _Auth()
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    async def as_http(records: list[dict[str, Any]]) -> None:
        await auth(json.loads(json.dumps(records, allow_nan=False)))  # as the client sends

    spool._send = as_http
    spool.put("exec", {"n": 0, "when": when, "argv": ("ls", "-l")})
    await until(lambda: len(auth.stored) == 1)
    (record,) = auth.stored.values()
    assert record["fields"] == {"n": 0, "when": str(when), "argv": ["ls", "-l"]}
    await spool.close()


async def test_a_backlog_larger_than_memory_keeps_arriving_in_order(tmp_path: Path) -> None:
    auth = _Auth()
    auth.down = True
    spool = AuditSpool(tmp_path, auth, segment_bytes=20_000)
    await spool.start()
    total = FRESH_EVENTS * 2 + 123
    for n in range(total):
        spool.put("exec", {"n": n})
        if n % 100 == 0:
            await asyncio.sleep(0)
    await until(lambda: not spool._buffer and not spool._writing)
    assert len(spool._fresh) <= FRESH_EVENTS  # the rest waits on disk only
    auth.down = False
    for n in range(total, total + 50):  # more while it catches up
        spool.put("exec", {"n": n})
    await until(lambda: len(auth.stored) == total + 50, timeout=30)
    assert auth.numbers() == list(range(total + 50))
    await spool.close()


async def test_close_ends_the_spool_when_its_sender_is_woken_as_it_is_cancelled(
    tmp_path: Path,
) -> None:
    # Events delivered one by one within a second: the cursor is not saved yet, so the
    # sender waits for the next write with a time limit. A write wakes it in the same
    # pass as close() cancels it; Python 3.11's wait_for then swallowed the cancel, and
    # close() waited for the sender forever (a hang seen in CI).
    auth = _Auth()
    spool = await _sent_one_by_one(tmp_path, auth, 3)
    spool._wake_sender.set()  # what the writer does after writing
    await asyncio.wait_for(spool.close(), 5)
    assert all(task.done() for task in spool._tasks)
    assert auth.numbers() == [0, 1, 2]


async def test_after_close_a_restart_resends_nothing_already_stored(tmp_path: Path) -> None:
    auth = _Auth()
    first = await _sent_one_by_one(tmp_path, auth, 5)
    await first.close()
    sent = len(auth.sent_ids)

    second = AuditSpool(tmp_path, auth)
    await second.start()
    second.put("exec", {"n": 5})
    await until(lambda: len(auth.stored) == 6)
    assert auth.sent_ids[sent:] == [list(auth.stored)[5]]  # only the new one went
    await second.close()


async def test_a_crash_resends_what_the_saved_cursor_does_not_cover_once(tmp_path: Path) -> None:
    auth = _Auth()
    crashed = await _sent_one_by_one(tmp_path, auth, 30)
    for task in crashed._tasks:  # kill -9: no close, the cursor maybe a second behind
        task.cancel()
    await asyncio.gather(*crashed._tasks, return_exceptions=True)

    restarted = AuditSpool(tmp_path, auth)
    await restarted.start()
    restarted.put("exec", {"n": 30})
    await until(lambda: len(auth.stored) == 31)
    assert auth.numbers() == list(range(31))
    await restarted.close()


async def test_while_busy_calls_go_at_most_every_min_interval(tmp_path: Path) -> None:
    auth = _Auth()
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def counting(records: list[dict[str, Any]]) -> None:
        calls.append(loop.time())
        await auth(records)

    interval = 0.3
    spool = AuditSpool(tmp_path, counting, min_interval=interval)
    await spool.start()
    spool.put("exec", {"n": 0})
    await until(lambda: len(auth.stored) == 1, timeout=interval)  # idle: sent at once
    started = loop.time()
    n = 1
    while loop.time() - started < 1.2:  # an event every 10 ms
        spool.put("exec", {"n": n})
        n += 1
        await asyncio.sleep(0.01)
    await until(lambda: len(auth.stored) == n)
    assert auth.numbers() == list(range(n))
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert min(gaps) >= interval * 0.9, gaps
    # Without the interval each write (every ~10 ms) would be a call of its own.
    assert len(calls) <= 1.2 / interval + 3, len(calls)
    await spool.close()


async def test_a_write_the_disk_cut_short_leaves_no_half_line_behind(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A full disk lets part of a batch in and refuses the rest: the half line is cut
    off, the batch is written again whole, and every event after it arrives, also when
    they have to be read back from the file (auth was away meanwhile)."""
    import errno
    import os

    from certgate.rpc import audit_spool

    auth = _Auth()
    auth.down = True
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    spool.put("exec", {"n": 0})
    await until(lambda: len(set(auth.sent_ids)) >= 1)
    real_write = os.write
    full = [True]

    def disk_full_once(fd: int, data: Any) -> int:
        if full[0]:
            full[0] = False
            real_write(fd, bytes(data[:7]))  # part of the line, then no space
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit_spool.os, "write", disk_full_once)
    for n in (1, 2):
        spool.put("exec", {"n": n})
    # Retried after a second, whole.
    await until(lambda: len(set(auth.sent_ids)) >= 3, timeout=15)
    for path in segments(tmp_path):
        for line in path.read_bytes().splitlines():
            json.loads(line)  # every line whole
    auth.down = False
    await until(lambda: len(auth.stored) == 3, timeout=30)
    assert sorted(auth.numbers()) == [0, 1, 2]
    await spool.close()


class _CountingAuth(_Auth):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0  # calls started, held at the gate or not

    async def __call__(self, records: list[dict[str, Any]]) -> None:
        self.calls += 1
        await super().__call__(records)


async def test_events_the_memory_copy_skipped_while_full_are_sent_not_jumped_over(
    tmp_path: Path,
) -> None:
    """While auth was away more was written than the memory copy holds; as the backlog
    drains, room frees and newer events join the copy after a gap. A batch taken from
    memory across that gap moved the cursor past events never sent."""
    auth = _CountingAuth()
    auth.down = True
    spool = AuditSpool(tmp_path, auth)
    await spool.start()
    for n in range(300):
        spool.put("exec", {"n": n})
    await until(lambda: auth.calls >= 1 and not spool._fresh)  # failed: memory dropped
    for n in range(300, 300 + FRESH_EVENTS + 200):
        spool.put("exec", {"n": n})
    await until(lambda: not spool._buffer and not spool._writing)
    assert len(spool._fresh) == FRESH_EVENTS  # the last 200 are on disk only

    auth.gate.clear()
    auth.down = False
    await until(lambda: auth.calls >= 2, timeout=15)  # the first 500, from the file
    auth.gate.set()
    auth.gate.clear()  # that call goes on; the next one waits
    await until(lambda: auth.calls >= 3)  # from memory, which now has room
    total = 300 + FRESH_EVENTS + 200 + 50
    for n in range(total - 50, total):
        spool.put("exec", {"n": n})
    await until(lambda: not spool._buffer and not spool._writing)
    auth.gate.set()
    await until(lambda: delivered(spool), timeout=15)
    assert auth.numbers() == list(range(total))
    await spool.close()
