"""The event loop every process of `certgate start` runs (the daemon and its auth workers).

uvloop (libuv, in C) by default: the proxy relays every packet of every session and the
node pumps every PTY; in four benchmark runs of five a session start cost 5-16% less CPU
than on asyncio's pure-Python selector loop (one went the other way; bench/README.md).
`CERTGATE_EVENT_LOOP=asyncio` runs asyncio's own loop instead: an operator's way out
should uvloop misbehave on a host, and how bench/concurrency.py compares the two in one
run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from certgate.errors import BadParameter

EVENT_LOOP_ENV = "CERTGATE_EVENT_LOOP"
ASYNCIO = "asyncio"
UVLOOP = "uvloop"
DEFAULT_EVENT_LOOP = UVLOOP

T = TypeVar("T")


def chosen_event_loop() -> str:
    """The loop this process should run, from the environment (the default if unset)."""
    name = os.environ.get(EVENT_LOOP_ENV, "").strip().lower() or DEFAULT_EVENT_LOOP
    if name not in (ASYNCIO, UVLOOP):
        raise BadParameter(
            f'{EVENT_LOOP_ENV}="{name}" is not an event loop certgate runs: use'
            f" {ASYNCIO} or {UVLOOP}"
        )
    return name


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What asyncio.Runner makes its loop with; None for asyncio's own."""
    if name == ASYNCIO:
        return None
    import uvloop  # a dependency; imported here so the asyncio choice never loads it

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on the chosen loop."""
    try:
        factory = loop_factory(chosen_event_loop())
    except BaseException:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
