"""The user CAs a server trusts: parsed once per change, never trusted past a change."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncssh
import pytest

from certgate.auth.ca import generate_authority
from certgate.srv.user_cas import NO_KEYS, TrustedUserCAs


def _ca_line(cluster: str) -> str:
    authority = generate_authority("user_ssh", cluster, datetime.now(UTC))
    return authority.spec.active_keys[0].public


def _blob(line: str) -> bytes:
    return bytes(asyncssh.import_public_key(" ".join(line.split()[:2])).public_data)


def test_a_rotated_ca_is_what_the_next_connection_trusts() -> None:
    old, new = _ca_line("old.example"), _ca_line("new.example")
    lines = [old]
    cas = TrustedUserCAs(lambda: lines)
    first = cas.current()
    assert first.blobs == {_blob(old)}
    assert cas.current() is first  # unchanged lines: nothing parsed again
    lines[:] = [new]
    rotated = cas.current()
    assert rotated.blobs == {_blob(new)}
    assert _blob(old) not in rotated.blobs
    assert rotated.authorized_keys is not None


def test_every_line_form_names_its_key_and_known_hosts_lines_are_not_authorized_keys() -> None:
    plain, as_auth, as_known = _ca_line("a.example"), _ca_line("b.example"), _ca_line("c.example")
    cas = TrustedUserCAs(
        lambda: [plain, f"cert-authority {as_auth}", f"@cert-authority * {as_known}"]
    )
    keys = cas.current()
    assert keys.blobs == {_blob(plain), _blob(as_auth), _blob(as_known)}
    assert keys.authorized_keys is not None


def test_malformed_lines_are_skipped_and_a_failing_read_trusts_nothing() -> None:
    good = _ca_line("good.example")
    broken = {"fail": False}

    def read() -> list[str]:
        if broken["fail"]:
            raise OSError("view unavailable")
        return ["ssh-ed25519 not-base64", "garbage", good]

    cas = TrustedUserCAs(read)
    assert cas.current().blobs == {_blob(good)}
    broken["fail"] = True
    assert cas.current() is NO_KEYS  # fail closed, not the last good answer
    broken["fail"] = False
    assert cas.current().blobs == {_blob(good)}


@pytest.mark.parametrize("lines", [[], ["nonsense"]])
def test_no_usable_ca_authorizes_no_key(lines: list[str]) -> None:
    keys = TrustedUserCAs(lambda: lines).current()
    assert keys.blobs == frozenset()
    assert keys.authorized_keys is None
