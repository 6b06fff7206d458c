"""One-time codes for test users, without waiting 30 s between logins.

The server accepts the code of the current 30-second step and of one step either side,
and never a step at or before the last one used. `OtpDevice.next_code()` hands out the
codes of the current and next step in turn, and waits for time to move on
only when those are used up, just as a person would.
"""

from __future__ import annotations

import time

import pyotp

STEP = 30


class OtpDevice:
    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last_step = -1

    def next_code(self) -> str:
        while True:
            current = int(time.time()) // STEP
            # Never the previous step: on a loaded machine the request may cross into the
            # next step, and then that code would be two steps old and refused.
            step = max(self.last_step + 1, current)
            if step <= current + 1:
                self.last_step = step
                return str(self.totp.at(step * STEP))
            time.sleep(0.5)

    def used_code(self) -> str:
        """The code of the step used last (a replay)."""
        return str(self.totp.at(self.last_step * STEP))
