"""SessionTrackerPublisher: changes are coalesced into few calls, deletes follow puts.

The auth side here records the calls it gets (the real API is exercised by
tests/integration/test_auditor_joins_live_session.py).
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from certgate.api.meta import Metadata
from certgate.api.session_tracker import SessionTracker, SessionTrackerSpec
from certgate.errors import ConnectionProblem
from certgate.rpc import session_trackers
from certgate.rpc.session_trackers import SessionTrackerPublisher
from tests.support.wait import eventually_async


class _Auth:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.arrived = 0  # calls that reached auth, held at the gate or not

    async def call(self, method: str, path: str, json: Any = None) -> None:
        assert (method, path) == ("POST", "/v1/sessions")
        self.arrived += 1
        await self.gate.wait()
        self.calls.append(json)
        if self.fail:
            raise ConnectionProblem("auth is down")


def tracker(n: int) -> SessionTracker:
    return SessionTracker(
        metadata=Metadata(name=f"00000000-0000-4000-8000-{n:012d}"),
        spec=SessionTrackerSpec(
            session_kind="shell", user="alice", login="alice", node="node-1",
            started=datetime(2026, 1, 1, tzinfo=UTC),
        ),
    )  # fmt: skip


def names(call: dict[str, Any]) -> list[str]:
    return [t["metadata"]["name"][-3:] for t in call["put"]]


async def test_a_burst_is_one_call_and_ended_sessions_cost_nothing() -> None:
    auth = _Auth()
    publisher = SessionTrackerPublisher(auth, ttl=3, refresh=60)  # type: ignore[arg-type]
    publisher.start()
    for n in range(200):
        publisher.put(tracker(n))
    publisher.remove(tracker(7).name)  # started and ended before anything was sent
    await publisher.flushed()
    assert len(auth.calls) == 1
    assert len(auth.calls[0]["put"]) == 199 and auth.calls[0]["delete"] == []
    assert auth.calls[0]["ttl_seconds"] == 3
    for n in range(200):
        publisher.remove(tracker(n).name)
    await publisher.flushed()
    assert len(auth.calls) == 2
    assert len(auth.calls[1]["delete"]) == 199  # not 7: auth never had it
    assert tracker(7).name not in auth.calls[1]["delete"]
    await publisher.close()


async def test_changes_made_during_a_call_go_in_the_next_one() -> None:
    auth = _Auth()
    publisher = SessionTrackerPublisher(auth, refresh=60)  # type: ignore[arg-type]
    publisher.start()
    auth.gate.clear()
    publisher.put(tracker(1))
    await eventually_async(lambda: auth.arrived == 1)  # the first call is held at the gate
    publisher.put(tracker(2))
    publisher.put(tracker(1))  # again: still one entry
    auth.gate.set()
    await publisher.flushed()
    assert [sorted(names(c)) for c in auth.calls] == [["001"], ["001", "002"]]
    await publisher.close()


async def test_live_trackers_are_refreshed_and_failures_retried_by_refresh() -> None:
    auth = _Auth()
    publisher = SessionTrackerPublisher(auth, refresh=0.05)  # type: ignore[arg-type]
    auth.fail = True
    publisher.start()
    publisher.put(tracker(1))
    await eventually_async(lambda: len(auth.calls) >= 2)  # failed, then failed again
    auth.fail = False
    failed = len(auth.calls)
    await eventually_async(lambda: len(auth.calls) > failed)  # a refresh, now accepted
    assert all(names(c) == ["001"] for c in auth.calls)
    publisher.remove(tracker(1).name)
    await publisher.flushed()
    assert auth.calls[-1]["delete"] == [tracker(1).name]
    await publisher.close()


async def test_while_busy_calls_go_at_most_every_min_interval() -> None:
    auth = _Auth()
    interval = 0.3
    publisher = SessionTrackerPublisher(auth, ttl=3, refresh=60, min_interval=interval)  # type: ignore[arg-type]
    publisher.start()
    loop = asyncio.get_running_loop()
    times: list[float] = []
    original = auth.call

    async def timed(method: str, path: str, json: Any = None) -> None:
        times.append(loop.time())
        await original(method, path, json)

    auth.call = timed  # type: ignore[method-assign]
    publisher.put(tracker(0))
    await eventually_async(lambda: auth.calls, timeout=interval)  # idle: at once
    started = loop.time()
    n = 1
    while loop.time() - started < 1.2:  # a session starting every 10 ms
        publisher.put(tracker(n))
        n += 1
        await asyncio.sleep(0.01)
    await publisher.flushed()
    sent = {name for call in auth.calls for name in names(call)}
    assert len(sent) == n  # every tracker went
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= interval * 0.9, gaps
    assert len(times) <= 1.2 / interval + 3, len(times)
    await publisher.close()


async def test_close_ends_the_worker_when_its_call_is_answered_as_it_is_cancelled() -> None:
    # The flush time is up with a call under way, and auth's answer arrives as close()
    # cancels the worker. Python 3.11's wait_for then returned the answer and swallowed
    # the cancel: the worker went back to waiting for changes, and close() waited for it
    # forever. Each round lets the answer land a different number of loop passes after
    # close() starts; with wait_for some rounds hung (1 to 3 here, on Python 3.11.7).
    async def close_as_answered(passes: int) -> None:
        auth = _Auth()
        publisher = SessionTrackerPublisher(auth, refresh=60)  # type: ignore[arg-type]
        publisher.start()
        tasks = list(publisher._tasks)
        auth.gate.clear()
        publisher.put(tracker(1))
        await eventually_async(lambda: auth.arrived == 1)  # the call is held at the gate
        closing = asyncio.create_task(publisher.close(flush_seconds=0))
        for _ in range(passes):
            await asyncio.sleep(0)
        auth.gate.set()  # the answer
        await asyncio.wait_for(closing, 5)
        assert all(task.done() for task in tasks)

    for passes in range(6):
        await close_as_answered(passes)


async def test_an_auth_that_does_not_answer_is_said_in_the_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A timeout has no words of its own: the line ended in "not sent: " before.
    monkeypatch.setattr(session_trackers, "CALL_TIMEOUT", 0.05)
    auth = _Auth()
    auth.gate.clear()  # auth never answers
    publisher = SessionTrackerPublisher(auth)  # type: ignore[arg-type]
    publisher.start()
    publisher.put(tracker(1))
    await eventually_async(lambda: "not sent" in caplog.text)
    assert "1 session tracker change(s) not sent: auth did not answer within 0.05s" in caplog.text
    auth.gate.set()
    await publisher.close()
