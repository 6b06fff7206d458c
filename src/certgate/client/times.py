"""Times as users type them on the command line: `1h` (ago) or RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime

from certgate.api.duration import parse_duration
from certgate.errors import BadParameter


def parse_since(value: str | None) -> str | None:
    """`1h` (that long ago) or an RFC 3339 time, as an RFC 3339 time."""
    if not value:
        return None
    if value.strip().isdigit():
        # `--since=10`: seconds, minutes or a year? The duration flags refuse it too.
        raise BadParameter(
            f'invalid time "{value}": give a unit ({value}s, {value}m, {value}h) or an RFC'
            " 3339 time"
        )
    try:
        return (datetime.now(UTC) - parse_duration(value)).isoformat()
    except BadParameter:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadParameter(f'invalid time "{value}": use a duration (1h) or RFC 3339') from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
