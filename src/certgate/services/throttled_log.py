"""A warning that may fire on every request, logged at most once per interval.

When the store or the bucket fails, every API call that needs it fails alike: one
log line per call would bury everything else. The first failure is logged at once;
the next ones within `interval` are counted, and said with the next line logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledWarning:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last = float("-inf")
        self._held = 0

    def warn(self, message: str) -> None:
        now = self._clock()
        if now - self._last < self._interval:
            self._held += 1
            return
        more = f" (and {self._held} more like it since the last)" if self._held else ""
        self._log.warning("%s%s", message, more)
        self._last, self._held = now, 0
