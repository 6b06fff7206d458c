"""Cutting a user's existing certificates when their access shrinks.

Certificates carry the roles and logins they were issued with, and nodes and proxies
decide from them without asking auth. So when a user is deleted, reset, or loses a
role or a login, the certificates they already hold must stop working everywhere at
once — live sessions included — while a fresh login (with what they hold now) works at
once. That is a lock:

    lock "certs-of-<user>":  target {user: <user>, issued_before: C - 1 min}

`C` is the cut moment rounded *up* to a whole second: certificates say when they
start in whole seconds, one minute (CLOCK_SKEW) before they were signed. Every
certificate signed before the cut says it started before `C - 1 min`; every one signed
from `C` on says it started at or after it. The cut waits until `C` (under a second)
before it returns, so a login after `cgctl` answered is never caught by it.

Narrowing a user cuts twice: before the change is written, so that a failure after it
(the store, a lost answer that a client then sends to another auth, which finds nothing
left to narrow) never leaves the old certificates working; and after it, for those
signed while the change was being written.

The lock spreads through the usual watch to every node and proxy (which end matching
sessions) and expires by itself when the longest certificate it can cover would have:
`C` + the longest `max_session_ttl` among the roles the user held (never more than the
30h cap on any user certificate).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.api.user import User
from certgate.auth.ca import CLOCK_SKEW
from certgate.auth.core import MAX_USER_TTL, AuthCore
from certgate.errors import NotFound


class UserCuts(AuthCore):
    async def cut_user_certs(self, user: User, by: str, reason: str, wait: bool = True) -> Lock:
        """Lock every certificate `user` holds now (see the module docstring). Without
        `wait`, return before the cut moment (a cut that another follows)."""
        now = self.clock.now()
        cut = _next_whole_second(now)
        expires = cut + await self._longest_certificate(user.spec.roles)
        name = f"certs-of-{user.name}"
        try:
            previous: Lock | None = await self.locks.get(name)
        except NotFound:
            previous = None
        if previous is not None and previous.metadata.expires is not None:
            expires = max(expires, previous.metadata.expires)  # still covers older ones
        lock = Lock(
            metadata=Metadata(name=name, expires=expires),
            spec=LockSpec(
                target=LockTarget(user=user.name, issued_before=cut - CLOCK_SKEW),
                message=f"certificate issued before user {user.name} was {reason}; log in again",
                created_by=by,
                created=now,
            ),
        )
        await self.locks.upsert(lock)
        await self.audit.emit(
            "lock.created",
            user=by,
            name=name,
            target=lock.spec.target.describe(),
            message=lock.spec.message,
            expires=expires.isoformat(),
        )
        # Until C, a certificate signed now would still be caught: wait it out (under a
        # second), so whoever ran the command can log in again as soon as it returns.
        left = (cut - self.clock.now()).total_seconds()
        if wait and left > 0:
            await asyncio.sleep(left)
        return lock

    async def _longest_certificate(self, role_names: list[str]) -> timedelta:
        """How long a certificate issued for these roles could have been valid."""
        try:
            roles = await self.roles.get_many(role_names)
        except NotFound:
            return MAX_USER_TTL  # a role is gone: its limit is unknown
        if not roles:
            return MAX_USER_TTL
        return min(MAX_USER_TTL, max(role.spec.options.max_session_ttl for role in roles))


def narrowed(before: User, after: User) -> list[str]:
    """What `after` no longer grants that `before` did: roles and trait values."""
    lost = [f"role {role}" for role in before.spec.roles if role not in after.spec.roles]
    for key, values in before.spec.traits.items():
        kept = after.spec.traits.get(key, [])
        lost += [f"{key} {value}" for value in values if value not in kept]
    return lost


def _next_whole_second(moment: datetime) -> datetime:
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)
