"""Reading certificates back, and the checks an attacker's certificate must fail."""

from __future__ import annotations

import base64
import struct
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import ssh
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.api.authority import CertAuthority
from certgate.api.certs import (
    IDENTITY_EXTENSION_OID,
    from_ssh_time,
    generate_private_key,
    identity_from_ssh_cert,
    identity_from_x509,
    load_ssh_public_key_text,
    private_key_to_openssh,
    private_key_to_pem,
    public_key_openssh,
    to_ssh_time,
    verify_ssh_user_cert,
    verify_x509_client_cert,
)
from certgate.api.identity import SSH_EXT_ROLES, Identity
from certgate.auth.ca import CLOCK_SKEW, CASigner, generate_authority, user_ca_trust_line
from certgate.errors import AccessDenied, BadParameter

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=8)
PERMIT = {"permit_port_forwarding": True, "permit_agent_forwarding": True}

ALICE = Identity(
    username="alice",
    roles=("dev",),
    traits={"logins": ["alice", "ubuntu"]},
    logins=("alice", "ubuntu"),
    request_ids=("req-1", "req-2"),
    expires=LATER,
    mfa_verified=True,
)
# ALICE as read back from her certificates, which say when they were issued.
READ_ALICE = replace(ALICE, issued=NOW - CLOCK_SKEW)


@pytest.fixture(scope="module")
def cas() -> dict[str, CertAuthority]:
    return {
        "user_ssh": generate_authority("user_ssh", "example", NOW),
        "host_ssh": generate_authority("host_ssh", "example", NOW),
        "user_tls": generate_authority("user_tls", "example", NOW),
        # Another cluster with the very same name: same CA subject, different key.
        "evil_ssh": generate_authority("user_ssh", "example", NOW),
        "evil_tls": generate_authority("user_tls", "example", NOW),
    }


@pytest.fixture(scope="module")
def signers(cas: dict[str, CertAuthority]) -> dict[str, CASigner]:
    return {name: CASigner(ca) for name, ca in cas.items()}


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return generate_private_key()


@pytest.fixture(scope="module")
def trusted(cas: dict[str, CertAuthority]) -> list[str]:
    return [user_ca_trust_line(cas["user_ssh"])]


@pytest.fixture(scope="module")
def alice_ssh(signers: dict[str, CASigner], key: ec.EllipticCurvePrivateKey) -> str:
    return signers["user_ssh"].sign_user_ssh(public_key_openssh(key), ALICE, NOW, LATER, **PERMIT)


@pytest.fixture(scope="module")
def tls_cas(cas: dict[str, CertAuthority]) -> list[str]:
    return [cas["user_tls"].spec.active_keys[0].public]


@pytest.fixture(scope="module")
def alice_tls(signers: dict[str, CASigner], key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    pem = signers["user_tls"].sign_tls(key.public_key(), ALICE, NOW, LATER)
    return x509.load_pem_x509_certificate(pem.encode())


def _ca_private_key(ca: CertAuthority) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    private = serialization.load_pem_private_key(ca.spec.active_keys[0].private.encode(), None)
    assert isinstance(private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    return private


def _ssh_builder(
    key: ec.EllipticCurvePrivateKey,
    principals: list[bytes],
    cert_type: ssh.SSHCertificateType = ssh.SSHCertificateType.USER,
) -> ssh.SSHCertificateBuilder:
    return (
        ssh.SSHCertificateBuilder()
        .public_key(key.public_key())
        .serial(1)
        .type(cert_type)
        .key_id(b"alice")
        .valid_principals(principals)
        .valid_after(to_ssh_time(NOW))
        .valid_before(to_ssh_time(LATER))
    )


def _sshstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _tamper(line: str, old: bytes, new: bytes) -> str:
    """Replace one well-formed field inside a certificate blob and re-encode it."""
    kind, b64 = line.split()[:2]
    blob = base64.b64decode(b64)
    assert blob.count(old) == 1
    return f"{kind} {base64.b64encode(blob.replace(old, new)).decode()}"


# ---------------------------------------------------------------------------- SSH parsing


def test_ssh_identity_round_trip(alice_ssh: str) -> None:
    assert identity_from_ssh_cert(alice_ssh) == READ_ALICE
    assert identity_from_ssh_cert(alice_ssh.encode()) == READ_ALICE
    parsed = ssh.load_ssh_public_identity(alice_ssh.encode())
    assert isinstance(parsed, ssh.SSHCertificate)
    assert identity_from_ssh_cert(parsed) == READ_ALICE


names = st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True)


@settings(max_examples=25, deadline=None)
@given(
    username=st.from_regex(r"[a-z][a-z0-9.@_-]{0,40}", fullmatch=True),
    roles=st.lists(names, max_size=4, unique=True),
    logins=st.lists(names, min_size=1, max_size=4, unique=True),
    traits=st.dictionaries(names, st.lists(st.text(max_size=10), max_size=3), max_size=3),
    request_ids=st.lists(names, max_size=2, unique=True),
    mfa=st.booleans(),
)
def test_any_identity_survives_both_certificates(
    signers: dict[str, CASigner],
    key: ec.EllipticCurvePrivateKey,
    username: str,
    roles: list[str],
    logins: list[str],
    traits: dict[str, list[str]],
    request_ids: list[str],
    mfa: bool,
) -> None:
    identity = Identity(
        username=username,
        roles=tuple(roles),
        traits=traits,
        logins=tuple(logins),
        request_ids=tuple(request_ids),
        expires=LATER,
        mfa_verified=mfa,
    )
    line = signers["user_ssh"].sign_user_ssh(
        public_key_openssh(key), identity, NOW, LATER, **PERMIT
    )
    assert identity_from_ssh_cert(line) == replace(identity, issued=NOW - CLOCK_SKEW)
    pem = signers["user_tls"].sign_tls(key.public_key(), identity, NOW, LATER)
    read = identity_from_x509(x509.load_pem_x509_certificate(pem.encode()))
    assert read == replace(identity, issued=NOW - CLOCK_SKEW)


def test_plain_public_key_is_not_a_certificate(key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(BadParameter, match="plain public key"):
        identity_from_ssh_cert(public_key_openssh(key))
    with pytest.raises(BadParameter, match="malformed ssh certificate"):
        identity_from_ssh_cert("ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA")


def test_malformed_ssh_extension_is_a_bad_parameter(
    cas: dict[str, CertAuthority], key: ec.EllipticCurvePrivateKey
) -> None:
    cert = (
        _ssh_builder(key, [b"alice"])
        .add_extension(SSH_EXT_ROLES.encode(), b"{not json")
        .sign(_ca_private_key(cas["user_ssh"]))
    )
    with pytest.raises(BadParameter, match="roles@certgate"):
        identity_from_ssh_cert(cert)
    cert = (
        _ssh_builder(key, [b"alice"])
        .add_extension(SSH_EXT_ROLES.encode(), b'{"admin": true}')
        .sign(_ca_private_key(cas["user_ssh"]))
    )
    with pytest.raises(BadParameter, match="list of strings"):
        identity_from_ssh_cert(cert)


def test_ssh_times() -> None:
    assert from_ssh_time(to_ssh_time(NOW)) == NOW
    assert from_ssh_time(2**64 - 1).year == 9999  # OpenSSH's "forever"
    with pytest.raises(BadParameter):
        to_ssh_time(datetime(2030, 1, 1))


# ---------------------------------------------------------------------------- SSH verify


def test_valid_user_cert_is_accepted(alice_ssh: str, trusted: list[str]) -> None:
    assert verify_ssh_user_cert(alice_ssh, trusted, NOW, "ubuntu") == READ_ALICE
    assert verify_ssh_user_cert(alice_ssh, trusted, NOW, None) == READ_ALICE
    # A bare key line and a known_hosts-style line name the CA as well as a trust line.
    bare = " ".join(trusted[0].split()[:2])
    assert verify_ssh_user_cert(alice_ssh, [f"@cert-authority * {bare}"], NOW, None) == READ_ALICE
    # During a rotation the trust text holds several keys, one a line.
    rotating = f"{user_ca_trust_line(generate_authority('user_ssh', 'example', NOW))}\n{bare}"
    assert verify_ssh_user_cert(alice_ssh, [rotating], NOW, "alice") == READ_ALICE


def test_expired_user_cert_is_refused(alice_ssh: str, trusted: list[str]) -> None:
    with pytest.raises(AccessDenied, match=r"certificate expired at 2030-01-01T08:00:00\+00:00"):
        verify_ssh_user_cert(alice_ssh, trusted, LATER, "alice")


def test_not_yet_valid_user_cert_is_refused(alice_ssh: str, trusted: list[str]) -> None:
    with pytest.raises(AccessDenied, match="not valid before"):
        verify_ssh_user_cert(alice_ssh, trusted, NOW - timedelta(minutes=2), "alice")


def test_cert_from_another_clusters_ca_is_refused(
    signers: dict[str, CASigner], key: ec.EllipticCurvePrivateKey, trusted: list[str]
) -> None:
    forged = signers["evil_ssh"].sign_user_ssh(public_key_openssh(key), ALICE, NOW, LATER, **PERMIT)
    with pytest.raises(AccessDenied) as refused:
        verify_ssh_user_cert(forged, trusted, NOW, "alice")
    assert refused.value.message == "certificate is not signed by this cluster's user CA"


def test_principals_altered_after_signing_are_refused(alice_ssh: str, trusted: list[str]) -> None:
    old = _sshstr(_sshstr(b"alice") + _sshstr(b"ubuntu"))
    new = _sshstr(_sshstr(b"alice") + _sshstr(b"root"))
    tampered = _tamper(alice_ssh, old, new)
    # Still a well-formed certificate that now claims "root"...
    assert "root" in identity_from_ssh_cert(tampered).logins
    # ...but the CA never signed it.
    with pytest.raises(AccessDenied, match="signature is invalid"):
        verify_ssh_user_cert(tampered, trusted, NOW, "root")


def test_expiry_extended_after_signing_is_refused(alice_ssh: str, trusted: list[str]) -> None:
    old = struct.pack(">Q", to_ssh_time(LATER))
    tampered = _tamper(alice_ssh, old, struct.pack(">Q", to_ssh_time(LATER + timedelta(days=365))))
    with pytest.raises(AccessDenied, match="signature is invalid"):
        verify_ssh_user_cert(tampered, trusted, LATER + timedelta(days=1), "alice")


def test_host_cert_presented_as_user_cert_is_refused(
    cas: dict[str, CertAuthority],
    signers: dict[str, CASigner],
    key: ec.EllipticCurvePrivateKey,
    trusted: list[str],
) -> None:
    host_cert = signers["host_ssh"].sign_host_ssh(
        public_key_openssh(key), "alice", ["alice"], LATER, valid_after=NOW
    )
    host_ca_trusted = [*trusted, cas["host_ssh"].spec.active_keys[0].public]
    with pytest.raises(AccessDenied, match="host certificate"):
        verify_ssh_user_cert(host_cert, host_ca_trusted, NOW, "alice")
    # Even one signed by the user CA's own key is not a user certificate.
    host_by_user_ca = _ssh_builder(key, [b"alice"], ssh.SSHCertificateType.HOST).sign(
        _ca_private_key(cas["user_ssh"])
    )
    with pytest.raises(AccessDenied, match="host certificate"):
        verify_ssh_user_cert(host_by_user_ca, trusted, NOW, "alice")


def test_login_outside_the_principals_is_refused(alice_ssh: str, trusted: list[str]) -> None:
    with pytest.raises(AccessDenied) as refused:
        verify_ssh_user_cert(alice_ssh, trusted, NOW, "root")
    assert refused.value.message == 'login "root" is not a principal of this certificate'


def test_cert_with_critical_options_is_refused(
    cas: dict[str, CertAuthority], key: ec.EllipticCurvePrivateKey, trusted: list[str]
) -> None:
    cert = (
        _ssh_builder(key, [b"alice"])
        .add_critical_option(b"source-address", b"10.0.0.0/8")
        .sign(_ca_private_key(cas["user_ssh"]))
    )
    with pytest.raises(AccessDenied, match="critical options"):
        verify_ssh_user_cert(cert, trusted, NOW, "alice")


def test_garbage_is_refused_not_crashed_on(trusted: list[str]) -> None:
    for junk in ("", "ssh-ed25519", "ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA!!!"):
        with pytest.raises(AccessDenied):
            verify_ssh_user_cert(junk, trusted, NOW, "alice")


# ---------------------------------------------------------------------------- X.509


def test_x509_identity_round_trip(alice_tls: x509.Certificate, tls_cas: list[str]) -> None:
    assert identity_from_x509(alice_tls) == READ_ALICE
    assert verify_x509_client_cert(alice_tls, tls_cas, NOW) == READ_ALICE
    pem = alice_tls.public_bytes(serialization.Encoding.PEM)
    assert verify_x509_client_cert(pem, tls_cas, NOW) == READ_ALICE
    assert verify_x509_client_cert(pem.decode(), tls_cas, NOW) == READ_ALICE


def test_x509_expiry_comes_from_the_certificate(
    signers: dict[str, CASigner], key: ec.EllipticCurvePrivateKey
) -> None:
    stale = Identity(username="alice", expires=NOW + timedelta(days=999))
    pem = signers["user_tls"].sign_tls(key.public_key(), stale, NOW, LATER)
    assert identity_from_x509(x509.load_pem_x509_certificate(pem.encode())).expires == LATER


def _ca_signed(
    cas: dict[str, CertAuthority],
    key: ec.EllipticCurvePrivateKey,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    ca_cert = x509.load_pem_x509_certificate(cas["user_tls"].spec.active_keys[0].public.encode())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(LATER)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    ca_key = _ca_private_key(cas["user_tls"])
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return builder.sign(ca_key, hashes.SHA256())


def test_x509_without_identity_is_refused(
    cas: dict[str, CertAuthority], key: ec.EllipticCurvePrivateKey, tls_cas: list[str]
) -> None:
    client = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    bare = _ca_signed(cas, key, [client])
    with pytest.raises(BadParameter, match="no certgate identity extension"):
        identity_from_x509(bare)
    with pytest.raises(AccessDenied, match="no certgate identity extension"):
        verify_x509_client_cert(bare, tls_cas, NOW)
    junk = _ca_signed(cas, key, [client, x509.UnrecognizedExtension(IDENTITY_EXTENSION_OID, b"{")])
    with pytest.raises(BadParameter, match="identity extension is malformed"):
        identity_from_x509(junk)
    with pytest.raises(AccessDenied, match="identity extension is malformed"):
        verify_x509_client_cert(junk, tls_cas, NOW)


def test_x509_without_client_auth_is_refused(
    cas: dict[str, CertAuthority], key: ec.EllipticCurvePrivateKey, tls_cas: list[str]
) -> None:
    identity = x509.UnrecognizedExtension(IDENTITY_EXTENSION_OID, ALICE.to_json().encode())
    server_only = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    no_usage: list[x509.ExtensionType] = [identity]
    for extensions in (no_usage, [identity, server_only]):
        with pytest.raises(AccessDenied, match="client authentication"):
            verify_x509_client_cert(_ca_signed(cas, key, extensions), tls_cas, NOW)


def test_expired_x509_is_refused(alice_tls: x509.Certificate, tls_cas: list[str]) -> None:
    with pytest.raises(AccessDenied, match="certificate expired at 2030-01-01T08:00:00"):
        verify_x509_client_cert(alice_tls, tls_cas, LATER + timedelta(seconds=1))
    with pytest.raises(AccessDenied, match="not valid before"):
        verify_x509_client_cert(alice_tls, tls_cas, NOW - timedelta(minutes=2))


def test_x509_from_another_cluster_is_refused(
    signers: dict[str, CASigner], key: ec.EllipticCurvePrivateKey, tls_cas: list[str]
) -> None:
    # Same cluster name, so the same issuer name: only the signature tells them apart.
    pem = signers["evil_tls"].sign_tls(key.public_key(), ALICE, NOW, LATER)
    with pytest.raises(AccessDenied, match="signature is invalid"):
        verify_x509_client_cert(pem, tls_cas, NOW)
    other = CASigner(generate_authority("user_tls", "elsewhere", NOW))
    with pytest.raises(AccessDenied, match="not issued by this cluster's CA"):
        verify_x509_client_cert(other.sign_tls(key.public_key(), ALICE, NOW, LATER), tls_cas, NOW)


def test_x509_identity_altered_after_signing_is_refused(
    alice_tls: x509.Certificate, tls_cas: list[str]
) -> None:
    der = alice_tls.public_bytes(serialization.Encoding.DER)
    old = b'"roles":["dev"]'
    assert der.count(old) == 1
    tampered = x509.load_der_x509_certificate(der.replace(old, b'"roles":["ops"]'))
    assert identity_from_x509(tampered).roles == ("ops",)
    with pytest.raises(AccessDenied, match="signature is invalid"):
        verify_x509_client_cert(tampered, tls_cas, NOW)


def test_malformed_x509_is_refused(tls_cas: list[str]) -> None:
    with pytest.raises(AccessDenied, match=r"malformed x\.509 certificate"):
        verify_x509_client_cert("-----BEGIN CERTIFICATE-----\nAA==\n", tls_cas, NOW)


# ---------------------------------------------------------------------------- keys


def test_client_keys_load_in_openssh(tmp_path: Path) -> None:
    private = generate_private_key()
    assert isinstance(private.curve, ec.SECP256R1)
    line = public_key_openssh(private)
    assert line.startswith("ecdsa-sha2-nistp256 AAAA")
    path = tmp_path / "id_ecdsa"
    path.write_bytes(private_key_to_openssh(private))
    path.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[:2] == line.split()
    loaded = serialization.load_pem_private_key(private_key_to_pem(private), None)
    assert loaded.public_key() == private.public_key()
    assert load_ssh_public_key_text(line + " alice@laptop") == private.public_key()


def test_only_ecdsa_and_ed25519_keys_are_certified() -> None:
    rsa_line = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(BadParameter, match="ecdsa or ed25519"):
        load_ssh_public_key_text(rsa_line)


_KEYS = {
    "ed25519": ed25519.Ed25519PrivateKey.generate().public_key(),
    "nistp256": ec.generate_private_key(ec.SECP256R1()).public_key(),
    "nistp384": ec.generate_private_key(ec.SECP384R1()).public_key(),
    "nistp521": ec.generate_private_key(ec.SECP521R1()).public_key(),
}


def _openssh(key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(_KEYS)),
    other=st.sampled_from(sorted(_KEYS)),
    cut=st.integers(min_value=0, max_value=200),
    flip=st.integers(min_value=0, max_value=200),
    extra=st.binary(max_size=8),
    mangle=st.sampled_from(["none", "truncate", "flip", "append", "swap_type", "newline"]),
)
def test_key_parser_agrees_with_cryptography_on_valid_and_mangled_keys(
    kind: str, other: str, cut: int, flip: int, extra: bytes, mangle: str
) -> None:
    # load_ssh_public_key_text parses the common key kinds itself (fast path); it must
    # accept exactly what cryptography accepts, as the same key, and refuse the rest.
    key_type, body = _openssh(_KEYS[kind]).split()
    blob = bytearray(base64.b64decode(body))
    if mangle == "truncate":
        blob = blob[: cut % (len(blob) + 1)]
    elif mangle == "flip":
        blob[flip % len(blob)] ^= 0x01
    elif mangle == "append":
        blob += extra
    elif mangle == "swap_type":
        key_type = _openssh(_KEYS[other]).split()[0]
    separator = b"\n" if mangle == "newline" else b" "
    line = key_type + separator + base64.b64encode(bytes(blob)) + b" comment"
    try:
        expected = ssh.load_ssh_public_key(line)
    except (ValueError, NotImplementedError, ssh.UnsupportedAlgorithm):
        with pytest.raises(BadParameter):
            load_ssh_public_key_text(line)
        return
    assert load_ssh_public_key_text(line) == expected
