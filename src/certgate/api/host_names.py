"""What a host may be called in a certificate: a name or an address, never a pattern.

A host certificate's principals and subjectAltNames are matched by clients against the
name they dial, so a wildcard (`*`) or a list would make one host answer for others.
"""

from __future__ import annotations

import ipaddress

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


def host_key(value: str) -> str:
    """`value` as a client compares host names: case-blind, without a trailing dot or
    IPv6 brackets, an IP address in its one canonical spelling."""
    text = value.strip().rstrip(".").lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def addr_host(addr: str) -> str:
    """The host of a `host:port` address (`[::1]:22` -> `::1`)."""
    if addr.count(":") > 1 and not addr.startswith("["):
        return addr  # a bare IPv6 address: no port to take off
    host = addr.rsplit(":", 1)[0] if ":" in addr else addr
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(value: str) -> bool:
    """Whether `value` names this machine to whoever dials it (localhost, 127.0.0.0/8,
    ::1): every host may say so of itself, and no traffic to it leaves the machine."""
    key = host_key(value)
    if key == "localhost" or key.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(key).is_loopback
    except ValueError:
        return False
