"""Handing the outcomes of one batched write to the callers waiting on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def settle(waiters: Iterable[asyncio.Future[T]], outcomes: Iterable[T | Exception]) -> None:
    """Give each waiter its outcome: the exception it raises, or its result. A waiter
    already done was cancelled: what it asked for was written anyway."""
    for done, outcome in zip(waiters, outcomes, strict=True):
        if done.done():
            continue
        if isinstance(outcome, Exception):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)
