"""Password hashing (argon2id) and one-time codes (TOTP, RFC 6238)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from certgate.errors import BadParameter

MIN_PASSWORD_LENGTH = 12
TOTP_STEP = 30

_hasher = PasswordHasher()  # argon2id with the library's recommended parameters
# Verified when the user does not exist, so an unknown name costs the same time as a
# wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash("certgate-timing-equaliser")


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadParameter(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise BadParameter("password must be at most 1024 characters")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True if `password` matches; with no hash, spends the same time and says False."""

    def verify() -> bool:
        try:
            return bool(_hasher.verify(password_hash or _DUMMY_HASH, password)) and bool(
                password_hash
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, user: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name=issuer)


def totp_now(secret: str, now: datetime) -> str:
    return str(pyotp.TOTP(secret).at(now))


def match_totp(secret: str, code: str, now: datetime) -> int | None:
    """The time step `code` belongs to (the current one or one either side), or None.

    Callers refuse a step at or before the last accepted one, so codes are single-use.
    """
    code = code.strip()
    if not (code.isdigit() and len(code) == 6) or not secret:
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // TOTP_STEP
    for step in (current, current - 1, current + 1):
        if totp.at(step * TOTP_STEP) == code:
            return step
    return None
