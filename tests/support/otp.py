"""One-time codes for test users, without waiting 30 s between logins.

The server accepts the code of the current 30-second step and of one step either side,
and never a step at or before the last one used. `OtpDevice.next_code()` hands out the
codes of the current and next step in turn, and waits for time to move on
only when those are used up, just as a person would. A device's first code may be the
previous step's (the code that just changed, which auth still takes), so that a test
signing up, logging in and stepping up rarely waits for the next step.
"""

from __future__ import annotations

import time

import pyotp

STEP = 30
# The previous step's code is handed out only this early in a step: the request has the
# rest of it to arrive, before that code becomes two steps old and is refused.
EARLY = 20


class OtpDevice:
    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last_step = -1

    def next_code(self) -> str:
        while True:
            now = time.time()
            current = int(now) // STEP
            # Never the previous step late in the current one: on a loaded machine the
            # request may cross into the next step, and then that code would be two steps
            # old and refused.
            earliest = current - 1 if self.last_step < 0 and now % STEP < EARLY else current
            step = max(self.last_step + 1, earliest)
            if step <= current + 1:
                self.last_step = step
                return str(self.totp.at(step * STEP))
            time.sleep(0.5)

    def used_code(self) -> str:
        """The code of the step used last (a replay)."""
        return str(self.totp.at(self.last_step * STEP))
