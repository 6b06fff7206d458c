"""Durations as operators write them: `90s`, `30m`, `8h`, `1h30m`, `7d`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from certgate.errors import BadParameter

_PART = re.compile(r"(\d+)(d|h|m|s)")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# No certgate duration needs more; longer ones overflow timedelta and datetime sums.
MAX_DURATION = timedelta(days=3650)
# A duration is never this long as text; longer text is refused before int() sees it.
_MAX_TEXT = 64


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m`-style text; a bare number means seconds. At most MAX_DURATION."""
    value = text.strip()
    if len(value) > _MAX_TEXT or not value.isascii():
        raise BadParameter(f"invalid duration {value[:20]!r}...: use 30m, 8h, ...")
    if value.isdigit():
        return _bounded(int(value), text)
    pos = 0
    seconds = 0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise BadParameter(f'invalid duration "{text}": use a number with a unit, like 30m or 8h')
    return _bounded(seconds, text)


def _bounded(seconds: int | float, text: object) -> timedelta:
    if not 0 <= seconds <= MAX_DURATION.total_seconds():  # also refuses NaN
        raise BadParameter(
            f"invalid duration {text!s:.20}: must be between 0s and {MAX_DURATION.days}d"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest `parse_duration` text for a duration (`1h30m`, `0s`)."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _coerce(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except BadParameter as exc:
            raise ValueError(f"invalid duration {value!r} (use 30m, 8h, ...)") from exc
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return _bounded(value, value)
        except BadParameter as exc:
            raise ValueError(f"must be between 0s and {MAX_DURATION.days}d") from exc
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
