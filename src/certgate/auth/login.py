"""Checking a login: password and one-time code, lockout after repeated failures.

Every refusal reads the same (`access denied: invalid user name, password or one-time
code`) whether the user is unknown, the password is wrong or the code is wrong, so a
caller learns nothing about which users exist. One exception: the right password with
the code that was just used is no guess (a person typed the same code twice, or two
logins raced); it says so and gives its lockout slot back. It reveals nothing, since
only someone who knows the password can get that answer. Failures are counted per
user name, known or not, under `/login_attempts/<name>`; the fifth in a row locks that
name for 20 minutes. Each attempt takes its slot in that count atomically before its
password is checked, so concurrent guesses cannot outrun the lockout. Every attempt is
an audit event; `cgctl users unlock NAME` lifts a lockout.

A step-up (`check_code`: a signed-in user proves with a fresh code that they are at the
keyboard, as the web UI asks before approving a request) shares all of this: the same
single-use codes, the same failure count and lockout, audited as `user.mfa.verify`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from certgate.api.user import User
from certgate.auth.passwords import match_totp, verify_password
from certgate.backend.base import Backend, Item
from certgate.clock import Clock
from certgate.errors import (
    AccessDenied,
    AlreadyExists,
    CompareFailed,
    LimitExceeded,
    NotFound,
    audited,
)
from certgate.services.audit import AuditLog
from certgate.services.users import UserSecrets, UserService

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=20)
REFUSAL = "access denied: invalid user name, password or one-time code"
REUSED = "access denied: this one-time code was already used; wait for the next one"
REUSED_REASON = "one-time code already used"
# Reading and swapping the counter is retried this often when other attempts keep
# winning the race (each retry means one of them took a slot).
RESERVE_TRIES = 200
LOCKED = "access denied: too many failed logins; try again in 20 minutes or ask an admin"
LOCKED_REASON = "account locked after repeated failures"
CODE_REFUSAL = "access denied: invalid one-time code"


class _Attempts(BaseModel):
    model_config = ConfigDict(frozen=True)

    failures: int = 0
    locked_until: datetime | None = None


class LoginChecker:
    def __init__(self, backend: Backend, users: UserService, audit: AuditLog, clock: Clock):
        self._backend = backend
        self._users = users
        self._audit = audit
        self._clock = clock

    async def check(self, name: str, password: str, otp: str, client_addr: str) -> User:
        """The user if password and code are right; AccessDenied otherwise."""
        now = self._clock.now()
        if not await self._reserve(name, now):
            await self._audit.emit(
                "user.login.locked",
                user=name,
                success=False,
                addr=client_addr,
                error=LOCKED_REASON,
            )
            raise audited(LimitExceeded(LOCKED))
        reason = await self._verify(name, password, otp, now)
        if reason:
            await self._audit.emit(
                "user.login.failure", user=name, success=False, addr=client_addr, error=reason
            )
            if reason == REUSED_REASON:
                await self._release(name)
                raise audited(AccessDenied(REUSED))
            # The reservation already counted this failure.
            raise audited(AccessDenied(REFUSAL))
        await self.unlock(name)
        return await self._users.get(name)

    async def check_code(self, name: str, otp: str, client_addr: str) -> None:
        """Returns if `otp` is a fresh one-time code of `name`; AccessDenied otherwise.

        Only for a caller already known to be `name` (its certificate says so): no
        password, but every code is single-use and a wrong one counts towards the same
        lockout as a wrong login, so a stolen session cannot guess its way through.
        """
        now = self._clock.now()
        if not await self._reserve(name, now):
            await self._audit.emit(
                "user.mfa.verify", user=name, success=False, addr=client_addr, error=LOCKED_REASON
            )
            raise audited(LimitExceeded(LOCKED))
        reason = await self._verify_code_only(name, otp, now)
        await self._audit.emit(
            "user.mfa.verify", user=name, success=not reason, addr=client_addr,
            **({"error": reason} if reason else {}),
        )  # fmt: skip
        if reason == REUSED_REASON:
            # Not a guess: the person typed a code they already used. As for logins.
            await self._release(name)
            raise audited(AccessDenied(REUSED))
        if reason:
            raise audited(AccessDenied(CODE_REFUSAL))
        await self.unlock(name)

    async def unlock(self, name: str) -> None:
        """Forget the failures counted for `name` (a good login, `cgctl users unlock`)."""
        try:
            await self._backend.delete(_key(name))
        except NotFound:
            pass

    async def _reserve(self, name: str, now: datetime) -> bool:
        """Count this attempt as a failure *before* checking it; False when locked out.

        The counter is taken with compare-and-swap in the store, so however many attempts
        arrive at once (and at however many auth processes), at most MAX_FAILURES per
        window get as far as a password check; a good login clears the counter after.
        The attempt that takes the last slot sets the lockout at once: if it turns out
        good, clearing lifts it.
        """
        for _ in range(RESERVE_TRIES):
            attempts, revision = await self._attempts(name)
            if attempts.locked_until is not None:
                if attempts.locked_until > now:
                    return False
                attempts = _Attempts()  # the lockout is over: a new window
            failures = attempts.failures + 1
            locked_until = now + LOCKOUT if failures >= MAX_FAILURES else None
            updated = _Attempts(failures=failures, locked_until=locked_until)
            item = Item(
                key=_key(name), value=updated.model_dump_json().encode(), expires=now + LOCKOUT
            )
            try:
                if revision:
                    await self._backend.compare_and_swap(item, revision)
                else:
                    await self._backend.create(item)
                return True
            except (CompareFailed, NotFound, AlreadyExists):
                continue  # another attempt took a slot meanwhile: read again
        # Contention this heavy on one name is an attack: refuse rather than verify.
        return False

    async def _release(self, name: str) -> None:
        """Give back the slot `_reserve` took for an attempt that was no guess.

        Compare-and-swap again, so concurrent attempts never lose a count; when this
        attempt's slot was the one that set the lockout, the lockout goes with it.
        """
        for _ in range(RESERVE_TRIES):
            attempts, revision = await self._attempts(name)
            if not revision or attempts.failures == 0:
                return
            failures = attempts.failures - 1
            locked_until = attempts.locked_until if failures >= MAX_FAILURES else None
            updated = _Attempts(failures=failures, locked_until=locked_until)
            item = Item(
                key=_key(name),
                value=updated.model_dump_json().encode(),
                expires=self._clock.now() + LOCKOUT,
            )
            try:
                await self._backend.compare_and_swap(item, revision)
                return
            except (CompareFailed, NotFound):
                continue

    async def _verify(self, name: str, password: str, otp: str, now: datetime) -> str:
        """An empty string when the login is good, else the reason (for the audit log)."""
        try:
            user = await self._users.get(name)
        except NotFound:
            user = None
        secrets = await self._users.get_secrets(name) if user else None
        password_hash = secrets.password_hash if secrets else None
        if not await verify_password(password_hash, password):
            return "unknown user" if user is None else "bad password"
        assert user is not None and secrets is not None
        if not user.status.active:
            return "invite not completed"
        return await self._use_code(name, secrets, otp, now)

    async def _verify_code_only(self, name: str, otp: str, now: datetime) -> str:
        """As `_verify` for a caller whose certificate already says it is `name`."""
        try:
            user = await self._users.get(name)
        except NotFound:
            return "unknown user"
        if not user.status.active:
            return "invite not completed"
        return await self._use_code(name, await self._users.get_secrets(name), otp, now)

    async def _use_code(self, name: str, secrets: UserSecrets, otp: str, now: datetime) -> str:
        """Spend `otp` if it is `name`'s next code: empty, else why not (for the audit)."""
        step = match_totp(secrets.totp_secret, otp, now)
        if step is None:
            return "bad one-time code"
        if step == secrets.last_otp_step:
            return REUSED_REASON
        if step < secrets.last_otp_step:
            return "one-time code superseded"
        try:
            await self._users.update_secrets(
                name, secrets.model_copy(update={"last_otp_step": step})
            )
        except CompareFailed:
            # Another login with this user won the race, maybe with this very code.
            return REUSED_REASON
        return ""

    async def _attempts(self, name: str) -> tuple[_Attempts, int]:
        try:
            item = await self._backend.get(_key(name))
        except NotFound:
            return _Attempts(), 0
        return _Attempts.model_validate_json(item.value), item.revision


def _key(name: str) -> str:
    return f"/login_attempts/{name}"
