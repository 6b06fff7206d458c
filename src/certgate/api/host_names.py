"""What a host may be called in a certificate: a name or an address, never a pattern.

A host certificate's principals and subjectAltNames are matched by clients against the
name they dial, so a wildcard (`*`) or a list would make one host answer for others.
"""

from __future__ import annotations

from certgate.errors import BadParameter

# Characters that make a pattern or a list in OpenSSH or X.509 name matching.
_PATTERN_CHARS = frozenset(",*?![]")
# A host certificate names its host, its cluster-qualified name and its addresses.
MAX_HOST_PRINCIPALS = 32


def check_host_name(value: str, what: str) -> None:
    """BadParameter unless `value` is a single host name or address."""
    if (
        not value
        or len(value) > 253
        or any(c.isspace() or c in _PATTERN_CHARS or not c.isprintable() for c in value)
    ):
        raise BadParameter(f'invalid {what} "{value}": a host name or address, no wildcards')
