"""Several auth addresses: which one to dial, and how long to wait before trying again.

    addresses = AuthAddresses(["auth-a:3025", "auth-b:3025"])
    addresses.current()            # the one that worked last (sticky)
    addresses.failed(addr)         # it did not answer: the next call starts at the next one

    backoff = Backoff(base=0.5, cap=30)
    await asyncio.sleep(backoff.next())   # uniformly in [0, min(cap, base * 2**n)]
    backoff.reset()                       # after a success

Full jitter (a delay drawn uniformly from zero to the exponential bound) rather than a
bound with a little noise: when one auth restarts, every node's watch drops at the same
instant, and only a delay spread over the whole window keeps thousands of them from
arriving back in step (the reconnect storm Teleport's operators know). The window grows
with each failed attempt, so the larger the fleet that keeps failing against a busy
auth, the wider it spreads.
"""

from __future__ import annotations

import random
import threading


class AuthAddresses:
    """The auth addresses a service may dial, sticky to the last one that worked."""

    def __init__(self, addresses: list[str]) -> None:
        if not addresses:
            raise ValueError("at least one auth address is needed")
        self._addresses = list(addresses)
        self._current = 0
        self._lock = threading.Lock()  # the CLIs' sync client may be used from threads

    @property
    def all(self) -> list[str]:
        return list(self._addresses)

    def current(self) -> str:
        return self._addresses[self._current]

    def in_order(self) -> list[str]:
        """Every address once, the current one first: the order one call tries them in."""
        start = self._current
        return self._addresses[start:] + self._addresses[:start]

    def failed(self, address: str) -> None:
        """`address` did not answer; if it is still the current one, move past it (a
        concurrent call that already moved on is not sent back)."""
        with self._lock:
            if self._addresses[self._current] == address:
                self._current = (self._current + 1) % len(self._addresses)

    def worked(self, address: str) -> None:
        with self._lock:
            self._current = self._addresses.index(address)


class Backoff:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, base·2^n))."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._random = rng or random.Random()

    def bound(self) -> float:
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 62))

    def next(self) -> float:
        delay = self._random.uniform(0, self.bound())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
