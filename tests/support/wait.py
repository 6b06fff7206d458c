"""Waiting for something another process does, without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """The first truthy value of check(), polling until `timeout` (then AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


async def eventually_async(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """eventually() for a check that runs on the event loop: it yields while it polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)
