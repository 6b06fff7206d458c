"""A background task's crash reaches the log with its traceback; cancellation does not."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from certgate.tasks import log_failure

log = logging.getLogger("certgate.test_tasks")


async def test_a_task_that_raises_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("disk on fire")

    task = asyncio.create_task(broken())
    task.add_done_callback(log_failure(log, "the writer"))
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next pass of the loop

    [record] = [r for r in caplog.records if r.name == log.name]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "the writer failed: disk on fire"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


async def test_a_cancelled_or_finished_task_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.create_task(asyncio.sleep(10))
    cancelled.add_done_callback(log_failure(log, "the sleeper"))
    finished = asyncio.create_task(asyncio.sleep(0))
    finished.add_done_callback(log_failure(log, "the quick one"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, finished, return_exceptions=True)
    await asyncio.sleep(0)
    assert [r for r in caplog.records if r.name == log.name] == []


def test_a_thread_future_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise OSError("no space left")

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(broken)
        future.add_done_callback(log_failure(log, "the recorder"))
    [record] = [r for r in caplog.records if r.name == log.name]
    assert record.getMessage() == "the recorder failed: no space left"
