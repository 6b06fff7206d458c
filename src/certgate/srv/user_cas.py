"""The user CAs an SSH server trusts, parsed when they change rather than per connection.

    TrustedUserCAs(read)          read() -> the CA lines now ("type base64 [comment]", an
                                  authorized_keys "cert-authority ..." line, or a
                                  known_hosts "@cert-authority <hosts> ..." one)
      .current() -> UserCAKeys    blobs: the CA keys' public blobs (validate_ca_key)
                                  authorized_keys: asyncssh's `cert-authority,principals="*"`
                                  list for set_authorized_keys, or None when there is no CA

`read()` is called for every connection, so a rotated CA applies to the next login; only
the parsing (asyncssh's key import and authorized_keys parser, ~0.2 ms a connection) is
kept, for as long as the lines are the same. A read that fails trusts nothing (fail
closed: nobody logs in, which is loud enough).

principals="*" makes asyncssh leave the login check to us: it would refuse a login that
is not a principal silently, and every refusal must be audited with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserCAKeys:
    blobs: frozenset[bytes]
    authorized_keys: Any  # asyncssh.SSHAuthorizedKeys | None (read-only once built)


NO_KEYS = UserCAKeys(frozenset(), None)


def ca_key_fields(line: str) -> tuple[str, str] | None:
    """(type, base64) of a trusted-CA line in any of the three forms, if it has them."""
    fields = line.split()
    if fields and fields[0].startswith("@"):
        fields = fields[2:]  # "@cert-authority <hosts> type base64"
    elif fields and fields[0] == "cert-authority":
        fields = fields[1:]  # authorized_keys form
    if len(fields) < 2:
        return None
    return fields[0], fields[1]


def parse_user_cas(lines: tuple[str, ...]) -> UserCAKeys:
    blobs: set[bytes] = set()
    entries: list[str] = []
    for line in lines:
        fields = ca_key_fields(line)
        try:
            if fields is None:
                raise ValueError("not a key")
            key = asyncssh.import_public_key(f"{fields[0]} {fields[1]}")
        except (asyncssh.KeyImportError, ValueError):
            log.warning("ignoring malformed trusted user CA key line: %.40s", line)
            continue
        blobs.add(bytes(key.public_data))
        if line.startswith("@"):
            continue  # a known_hosts line: trusted through validate_ca_key only
        entries.append(f'cert-authority,principals="*" {fields[0]} {fields[1]}')
    authorized = asyncssh.import_authorized_keys("\n".join(entries)) if entries else None
    return UserCAKeys(frozenset(blobs), authorized)


class TrustedUserCAs:
    def __init__(self, read: Callable[[], list[str]]) -> None:
        self._read = read
        self._lines: tuple[str, ...] | None = None
        self._keys = NO_KEYS

    def current(self) -> UserCAKeys:
        try:
            lines = tuple(self._read())
        except Exception:
            log.exception("could not read the trusted user CA keys")
            return NO_KEYS
        if lines != self._lines:
            self._keys = parse_user_cas(lines)
            self._lines = lines
        return self._keys
