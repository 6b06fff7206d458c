"""Background work whose failure is logged, never lost.

A task or future nobody awaits swallows its exception (STYLE: no fire-and-forget).
Whoever starts one keeps a reference and adds `log_failure(log, what)` as its done
callback, so a crash shows in that module's log with the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol


class _Done(Protocol):
    """What a done callback is given: an asyncio task or future, or a thread's future."""

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


def log_failure(log: logging.Logger, what: str) -> Callable[[_Done], None]:
    """A done callback that logs "`what` failed" with the traceback if the work raised;
    a cancelled or successful one logs nothing."""

    def done(work: _Done) -> None:
        if not work.cancelled() and (exc := work.exception()) is not None:
            log.error("%s failed: %s", what, exc, exc_info=exc)

    return done
