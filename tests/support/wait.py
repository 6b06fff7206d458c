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


# A TLS connection aiohttp closes (a watch socket, a test's own session) ends with an SSL
# shutdown that runs on the event loop after close() returns. A test's loop that closes
# first leaves the socket under it open, and its ResourceWarning fails whichever later
# test the garbage collector happens to run in. Loopback shutdowns take milliseconds.
TLS_SHUTDOWN_SECONDS = 0.3


async def tls_closed() -> None:
    """Let TLS connections closed just now finish their shutdown on this loop."""
    await asyncio.sleep(TLS_SHUTDOWN_SECONDS)
