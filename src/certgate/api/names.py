"""The one rule for names and times that reach the store or the audit log.

Every name a client can send — user, role, node, lock target, join name, login name —
is checked here, so nothing else has to guess what a name may hold:

    check_name("alice", "user")      -> "alice"
    check_name("alice\\n", "user")    -> BadParameter (no "alice\\n" stored beside "alice")
    ResourceName                      -> the same rule as a pydantic field type
    Time                              -> a datetime normalized to UTC, year <= MAX_YEAR

The pattern is matched with `fullmatch`: `re.match(r"...$")` also accepts a trailing
newline, which would store `"alice\\n"` beside `alice` (and a lock on `alice` would not
match it). The length cap keeps an unauthenticated caller from storing a megabyte name.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

from certgate.errors import BadParameter

# DNS names are at most 253 characters; no certgate name needs more.
NAME_MAX = 253
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
NAME_RULE = (
    f"must be 1 to {NAME_MAX} characters, start with a letter or digit and hold only "
    "letters, digits and . _ @ + -"
)
# Free text (trait values, messages): a cap and no control characters.
TEXT_MAX = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Times past this year are refused: year 10000 cannot be written as RFC 3339, and a
# time near 9999 overflows as soon as it is moved to another time zone.
MAX_YEAR = 9000


def name_problem(value: object) -> str | None:
    """Why `value` is not a valid name, or None when it is."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > NAME_MAX or not _NAME.fullmatch(value):
        return NAME_RULE
    return None


def check_name(value: object, what: str = "name") -> str:
    """`value` if it is a valid name, else BadParameter naming `what` (cut short)."""
    problem = name_problem(value)
    if problem is not None:
        raise BadParameter(f"invalid {what} {shown(value)}: {problem}")
    assert isinstance(value, str)
    return value


def shown(value: object, limit: int = 40) -> str:
    """`value` quoted for a log line or a message, cut to `limit` characters."""
    # JSON quoting: double quotes as in every other message, control characters escaped.
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text


def _valid_name(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _valid_optional_name(value: str) -> str:
    # Optional name fields (lock targets) are empty when unset.
    return _valid_name(value) if value else value


def _valid_text(value: str) -> str:
    if len(value) > TEXT_MAX:
        raise ValueError(f"must be at most {TEXT_MAX} characters")
    if _CONTROL.search(value):
        raise ValueError("must not hold control characters")
    return value


def utc_time(value: datetime) -> datetime:
    """`value` in UTC (naive times are taken as UTC); ValueError past MAX_YEAR."""
    too_late = f"must be before the year {MAX_YEAR + 1}"
    if value.year > MAX_YEAR:
        raise ValueError(too_late)
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError("must be a time that can be written in UTC") from exc
    if utc.year > MAX_YEAR:  # 9000-12-31T23:59-23:59 is in 9001 in UTC
        raise ValueError(too_late)
    return utc


ResourceName = Annotated[str, AfterValidator(_valid_name)]
OptionalName = Annotated[str, AfterValidator(_valid_optional_name)]
Text = Annotated[str, AfterValidator(_valid_text)]
Time = Annotated[datetime, AfterValidator(utc_time)]
