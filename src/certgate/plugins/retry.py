"""Outbound HTTP with timeouts, retries, backoff with jitter, and Retry-After honoured.

Retried: transport errors and timeouts, 429 (after Retry-After when given), 5xx.
Anything else is the caller's answer to read. After the last attempt the failure is
`ConnectionProblem`, which the plugin loop takes as "try this step again later".

A 429 is never tried again before its Retry-After has passed: one of up to
MAX_RETRY_AFTER seconds is waited here; a longer one, or one still in force when the
attempts run out, ends the call with `RateLimited`, and the loop waits out the rest.

A call that is not `idempotent` (a new post: sent twice, it shows twice) is tried again
here only when the server cannot have taken it: the connection was never made, or the
answer was 429 or 503. Any other failure (no answer in time, the connection cut before
the answer, another 5xx) ends it at once with `OutcomeUnknown`: the post may be there,
and the caller decides how to look before sending it again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import httpx

from certgate.errors import ConnectionProblem
from certgate.plugins.notifier import OutcomeUnknown, RateLimited

log = logging.getLogger("certgate.plugins")

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# The longest Retry-After waited inside one call; a longer one is waited by the loop.
MAX_RETRY_AFTER = 60.0
# The longest Retry-After honoured at all: a server's mistake (a year) must not stop
# every notification for that long.
MAX_RATE_LIMIT_WAIT = 900.0
# Failures before a single byte of the request left: trying again cannot repeat it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Answers that say the request was not taken.
_NOT_TAKEN = (429, 503)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many plugins do not retry in step."""
        ceiling = min(self.max_delay, self.first_delay * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds form), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RATE_LIMIT_WAIT)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    idempotent: bool = True,
    policy: RetryPolicy | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """`client.request(...)`, retried by `policy`; `what` names the call in logs and errors;
    `idempotent=False` for a call that must not be repeated blindly (a new post)."""
    policy = policy or RetryPolicy()
    problem = ""
    asked: float | None = None  # the last answer's Retry-After, while it was a 429
    for attempt in range(policy.attempts):
        wait = policy.delay(attempt)
        asked = None
        try:
            response = await client.request(method, url, timeout=TIMEOUT, **kwargs)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not idempotent and not isinstance(exc, _NOT_SENT):
                raise OutcomeUnknown(f"{what}: {problem}: it may have been taken") from exc
        else:
            if response.status_code == 429:
                problem = "rate limited (429)"
                asked = retry_after(response)
                if asked is not None and asked > MAX_RETRY_AFTER:
                    raise RateLimited(f"{what}: rate limited for {asked:.0f}s (429)", asked)
                wait = asked if asked is not None else wait
            elif response.status_code >= 500:
                problem = f"server error {response.status_code}"
                if not idempotent and response.status_code not in _NOT_TAKEN:
                    raise OutcomeUnknown(f"{what}: {problem}: it may have been taken")
            else:
                return response
        if attempt + 1 < policy.attempts:
            log.warning("%s: %s; retrying in %.1fs", what, problem, wait)
            await asyncio.sleep(wait)
    message = f"{what} failed after {policy.attempts} attempts: {problem}"
    if asked is not None:
        raise RateLimited(message, asked)
    raise ConnectionProblem(message)
