"""Outbound HTTP with timeouts, retries, backoff with jitter, and Retry-After honoured.

Retried: transport errors and timeouts, 429 (after Retry-After when given), 5xx.
Anything else is the caller's answer to read. After the last attempt the failure is
`ConnectionProblem`, which the plugin loop takes as "try this step again later".
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import httpx

from certgate.errors import ConnectionProblem

log = logging.getLogger("certgate.plugins")

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# A Retry-After longer than this is cut short: the loop retries the step later anyway.
MAX_RETRY_AFTER = 60.0


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
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    policy: RetryPolicy | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """`client.request(...)`, retried by `policy`; `what` names the call in logs and errors."""
    policy = policy or RetryPolicy()
    problem = ""
    for attempt in range(policy.attempts):
        wait = policy.delay(attempt)
        try:
            response = await client.request(method, url, timeout=TIMEOUT, **kwargs)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if response.status_code == 429:
                problem = "rate limited (429)"
                wait = retry_after(response) or wait
            elif response.status_code >= 500:
                problem = f"server error {response.status_code}"
            else:
                return response
        if attempt + 1 < policy.attempts:
            log.warning("%s: %s; retrying in %.1fs", what, problem, wait)
            await asyncio.sleep(wait)
    raise ConnectionProblem(f"{what} failed after {policy.attempts} attempts: {problem}")
