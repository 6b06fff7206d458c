"""Whether the request being served has written to the store (or tried to).

An auth cut off from its store answers 503, and a client that knows several auths
sends the call on to the next. That is safe only if nothing was written: a write whose
answer was lost may have been committed (PostgreSQL reports a dropped connection the
same way before and after COMMIT), and the next auth would then find the call done
and do the rest differently (a demotion found already made cuts nothing), or do it
twice (a second join token). Auth marks a 503 from a request that wrote nothing, and
clients resend only those (and reads).

Each request runs in a task of its own, so its mark lives in the task's context;
tasks started on a request's behalf that write for many requests (the batched
heartbeat writer) start with an empty context and mark nothing.
"""

from __future__ import annotations

from contextvars import ContextVar


class StoreWrites:
    __slots__ = ("tried",)

    def __init__(self) -> None:
        self.tried = False


_current: ContextVar[StoreWrites | None] = ContextVar("certgate_store_writes", default=None)


def track_store_writes() -> StoreWrites:
    """Start noting the store writes of the current task (a request's)."""
    writes = StoreWrites()
    _current.set(writes)
    return writes


def note_store_write() -> None:
    """Called by every backend before it writes."""
    writes = _current.get()
    if writes is not None:
        writes.tried = True
