"""A proxy certificate the pin accepted is remembered by its bytes: the same certificate
under the same pin, while valid, passes without being parsed again; any other
certificate, another pin, an expired entry or an unreadable file gets the full check."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.client.proxy_trust import (
    PinCheck,
    ProxyCertificateChanged,
    ProxyPin,
    VerifiedLeaves,
    spki_pin,
)
from tests.support.tlsfiles import self_signed


def _der(directory: Path) -> tuple[bytes, ProxyPin]:
    """A certificate's DER bytes and the pin of its key."""
    cert_file, _ = self_signed(directory)
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER), ProxyPin("spki", spki_pin(cert))


def _check(pin: ProxyPin, verified: VerifiedLeaves, der: bytes) -> PinCheck:
    check = PinCheck("proxy.test:3080", pin, verified=verified)
    check.check(der)
    return check


def test_an_accepted_certificate_passes_again_without_being_parsed(tmp_path: Path) -> None:
    der, pin = _der(tmp_path / "a")
    verified = VerifiedLeaves(tmp_path / "proxy_certs.json")
    assert _check(pin, verified, der).seen is not None  # checked in full, then kept
    assert (tmp_path / "proxy_certs.json").stat().st_mode & 0o777 == 0o600
    assert _check(pin, verified, der).seen is None  # the same bytes: vouched for


def test_another_certificate_is_still_refused(tmp_path: Path) -> None:
    der, pin = _der(tmp_path / "a")
    other, _ = _der(tmp_path / "b")
    verified = VerifiedLeaves(tmp_path / "proxy_certs.json")
    _check(pin, verified, der)
    check = PinCheck("proxy.test:3080", pin, verified=verified)
    with pytest.raises(ssl.SSLCertVerificationError):
        check.check(other)
    assert isinstance(check.failure, ProxyCertificateChanged)


def test_a_certificate_kept_under_another_pin_is_checked_against_this_one(
    tmp_path: Path,
) -> None:
    der, pin = _der(tmp_path / "a")
    _, other_pin = _der(tmp_path / "b")
    verified = VerifiedLeaves(tmp_path / "proxy_certs.json")
    _check(pin, verified, der)
    with pytest.raises(ssl.SSLCertVerificationError):
        PinCheck("proxy.test:3080", other_pin, verified=verified).check(der)


def test_an_expired_or_unreadable_entry_means_the_full_check(tmp_path: Path) -> None:
    der, pin = _der(tmp_path / "a")
    path = tmp_path / "proxy_certs.json"
    verified = VerifiedLeaves(path)
    _check(pin, verified, der)
    entries = json.loads(path.read_text())
    entries[0]["not_after"] = 1.0  # long past
    path.write_text(json.dumps(entries))
    assert _check(pin, verified, der).seen is not None
    for garbage in ("{", '{"sha256": 1}', '[{"not_before": "x"}]', "[]"):
        path.write_text(garbage)
        assert _check(pin, verified, der).seen is not None


def test_a_few_certificates_are_kept_for_proxies_behind_one_address(tmp_path: Path) -> None:
    path = tmp_path / "proxy_certs.json"
    verified = VerifiedLeaves(path)
    first, pin = _der(tmp_path / "a")
    _check(pin, verified, first)
    _check(pin, verified, first)  # the same one twice is kept once
    assert len(json.loads(path.read_text())) == 1
    for i in range(6):
        der, other_pin = _der(tmp_path / f"n{i}")
        _check(other_pin, verified, der)
    assert len(json.loads(path.read_text())) == 4
    assert _check(pin, verified, first).seen is not None  # the oldest went first


def test_a_publicly_trusted_proxy_is_left_to_the_ssl_module(tmp_path: Path) -> None:
    # Its chain and name were verified in the handshake; nothing is parsed or kept.
    der, _ = _der(tmp_path / "a")
    verified = VerifiedLeaves(tmp_path / "proxy_certs.json")
    assert _check(ProxyPin("public"), verified, der).seen is None
    assert not (tmp_path / "proxy_certs.json").exists()
    # First contact (no pin): what was seen is kept for the caller to pin.
    first = PinCheck("proxy.test:3080", None)
    first.check(der)
    assert first.seen is not None
