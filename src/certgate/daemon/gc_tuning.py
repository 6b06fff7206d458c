"""How the daemon's processes collect cyclic garbage: fewer, later collections, and
none of what start-up built.

At 10,000 nodes auth holds some 15,000 TLS connections, each dozens of long-lived
objects, and answers hundreds of requests a second, each allocating short-lived ones.
With CPython's defaults (a young collection every 700 net allocations) request objects
that were still in use were promoted to the older generations, each promotion counted
toward a full collection, and a full collection walks every connection's objects:
py-spy put 13-30 % of auth's samples in the collector (steady, restart, shutdown).

    settle_after_start()   # once the services are up: start-up's objects are frozen
    stop_collecting()      # when stopping: a process about to exit frees by refcount

- `gc.freeze()` moves everything alive after start-up (modules, schemas, the CAs, the
  caches) out of the collector's view: full collections no longer walk it.
- A young generation of YOUNG_THRESHOLD objects: a request's objects are mostly freed
  by reference counting before a collection sees them, so fewer are promoted.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def settle_after_start() -> None:
    gc.collect()  # start-up's garbage is not frozen with the rest
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def stop_collecting() -> None:
    """Shutting down with thousands of connections spent over a third of its time in
    the collector; what is left when the process exits is freed with it."""
    gc.disable()
