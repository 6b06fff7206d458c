"""The CAs and what they sign, checked against the real OpenSSH and OpenSSL tools.

The last tests start a real sshd that trusts our user CA and presents a host
certificate from our host CA, and log in to it with the real ssh client.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import ssh
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.api.authority import CA_TYPES, CertAuthority
from certgate.api.certs import (
    IDENTITY_EXTENSION_OID,
    NO_LOGIN_PRINCIPAL_PREFIX,
    generate_private_key,
    identity_from_ssh_cert,
    identity_from_x509,
    issued_by,
    private_key_to_openssh,
    public_key_openssh,
    ssh_public_key_text,
)
from certgate.api.identity import (
    SSH_EXT_MFA,
    SSH_EXT_REQUESTS,
    SSH_EXT_ROLES,
    SSH_EXT_TRAITS,
    Identity,
)
from certgate.auth.ca import (
    CA_VALIDITY,
    CLOCK_SKEW,
    CASigner,
    ca_pin,
    check_cluster_name,
    generate_authority,
    host_ca_known_hosts_line,
    user_ca_trust_line,
)
from certgate.errors import BadParameter

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def issued_now(identity: Identity) -> Identity:
    """`identity` as read back from a certificate signed at NOW (which says when)."""
    return replace(identity, issued=NOW - CLOCK_SKEW)


LATER = NOW + timedelta(hours=8)
SSHD = "/usr/sbin/sshd"
PERMIT = {"permit_port_forwarding": True, "permit_agent_forwarding": False}

ALICE = Identity(
    username="alice",
    roles=("dev", "auditor"),
    traits={"logins": ["alice", "ubuntu"], "kubernetes_groups": ["viewers"]},
    logins=("alice", "ubuntu"),
    request_ids=("req-1",),
    expires=LATER,
    mfa_verified=True,
)


@pytest.fixture(scope="module")
def cas() -> dict[str, CertAuthority]:
    return {t: generate_authority(t, "example", NOW) for t in CA_TYPES}


@pytest.fixture(scope="module")
def signers(cas: dict[str, CertAuthority]) -> dict[str, CASigner]:
    return {name: CASigner(ca) for name, ca in cas.items()}


@pytest.fixture(scope="module")
def user_key() -> ec.EllipticCurvePrivateKey:
    return generate_private_key()


def _run(*args: str | Path, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        input=input_text,
        timeout=30,
        env={**os.environ, "TZ": "UTC"},
        check=False,
    )


def _fingerprint(openssh_line: str) -> str:
    blob = base64.b64decode(openssh_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def public_key_text(key: ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


# ---------------------------------------------------------------------------- generation


def test_ssh_authority_holds_an_ed25519_key(cas: dict[str, CertAuthority]) -> None:
    ca = cas["user_ssh"]
    assert ca.name == "user_ssh" and ca.spec.type == "user_ssh"
    assert ca.spec.cluster_name == "example"
    (pair,) = ca.spec.active_keys
    assert pair.public.startswith("ssh-ed25519 AAAA")
    private = serialization.load_pem_private_key(pair.private.encode(), None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert public_key_text(private.public_key()) == pair.public
    assert pair.private.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8


def test_tls_authority_is_a_self_signed_ca(cas: dict[str, CertAuthority]) -> None:
    ca = cas["host_tls"]
    (pair,) = ca.spec.active_keys
    cert = x509.load_pem_x509_certificate(pair.public.encode())
    private = serialization.load_pem_private_key(pair.private.encode(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP256R1)
    assert cert.public_key() == private.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "host_tls CA example"
    )
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "example"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign
    assert cert.not_valid_after_utc - NOW == CA_VALIDITY
    assert cert.not_valid_before_utc <= NOW


def test_unknown_authority_type_is_refused() -> None:
    with pytest.raises(BadParameter, match="unknown ca type"):
        generate_authority("db_tls", "example", NOW)


def test_signer_needs_the_private_key(cas: dict[str, CertAuthority]) -> None:
    with pytest.raises(BadParameter, match="no private key"):
        CASigner(cas["user_ssh"].without_secrets())


def test_signer_signs_only_what_its_type_allows(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    line = public_key_openssh(user_key)
    with pytest.raises(BadParameter):
        signers["host_ssh"].sign_user_ssh(line, ALICE, NOW, LATER, **PERMIT)
    with pytest.raises(BadParameter):
        signers["user_ssh"].sign_host_ssh(line, "node-1", [], LATER)
    with pytest.raises(BadParameter):
        signers["user_ssh"].sign_tls(user_key.public_key(), ALICE, NOW, LATER)


# ---------------------------------------------------------------------------- SSH user


def test_user_cert_carries_the_identity(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    line = signers["user_ssh"].sign_user_ssh(
        public_key_openssh(user_key), ALICE, NOW, LATER, serial=7, **PERMIT
    )
    assert line.startswith("ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA")
    cert = ssh.load_ssh_public_identity(line.encode())
    assert isinstance(cert, ssh.SSHCertificate)
    assert cert.type == ssh.SSHCertificateType.USER
    assert cert.key_id == b"alice"
    assert cert.serial == 7
    assert cert.valid_principals == [b"alice", b"ubuntu"]
    assert cert.valid_after == int((NOW - CLOCK_SKEW).timestamp())
    assert cert.valid_before == int(LATER.timestamp())
    assert cert.critical_options == {}
    assert json.loads(cert.extensions[SSH_EXT_ROLES.encode()]) == ["dev", "auditor"]
    assert json.loads(cert.extensions[SSH_EXT_TRAITS.encode()]) == ALICE.traits
    assert json.loads(cert.extensions[SSH_EXT_REQUESTS.encode()]) == ["req-1"]
    assert cert.extensions[SSH_EXT_MFA.encode()] == b""
    assert cert.public_key() == user_key.public_key()
    cert.verify_cert_signature()
    assert identity_from_ssh_cert(line) == issued_now(ALICE)


def test_permit_flags_follow_the_arguments(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    def flags(**options: bool) -> set[bytes]:
        line = signers["user_ssh"].sign_user_ssh(
            public_key_openssh(user_key), ALICE, NOW, LATER, **options
        )
        cert = ssh.load_ssh_public_identity(line.encode())
        assert isinstance(cert, ssh.SSHCertificate)
        return {name for name in cert.extensions if name.startswith(b"permit-")}

    assert flags(permit_port_forwarding=False, permit_agent_forwarding=False) == {
        b"permit-pty",
        b"permit-user-rc",
    }
    assert flags(
        permit_pty=False,
        permit_port_forwarding=True,
        permit_agent_forwarding=True,
        permit_x11=True,
        permit_user_rc=False,
    ) == {b"permit-port-forwarding", b"permit-agent-forwarding", b"permit-X11-forwarding"}


def test_optional_extensions_are_left_out_when_empty(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    plain = Identity(username="bob", logins=("bob",), expires=LATER)
    line = signers["user_ssh"].sign_user_ssh(
        public_key_openssh(user_key), plain, NOW, LATER, **PERMIT
    )
    cert = ssh.load_ssh_public_identity(line.encode())
    assert isinstance(cert, ssh.SSHCertificate)
    assert SSH_EXT_REQUESTS.encode() not in cert.extensions
    assert SSH_EXT_MFA.encode() not in cert.extensions
    assert identity_from_ssh_cert(cert) == issued_now(plain)


@pytest.mark.parametrize(
    "make_key",
    [
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: ec.generate_private_key(ec.SECP521R1()),
    ],
    ids=["ed25519", "nistp256", "nistp384", "nistp521"],
)
def test_user_cert_for_every_key_kind_parses_verifies_and_reads_in_ssh_keygen(
    tmp_path: Path,
    signers: dict[str, CASigner],
    make_key: Callable[[], ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey],
) -> None:
    # The certificate encoding is ours (auth/ca.py), so check it against both a strict
    # parser (cryptography) and OpenSSH for every key kind a client may send.
    key = make_key()
    key_line = ssh_public_key_text(key.public_key())
    line = signers["user_ssh"].sign_user_ssh(key_line, ALICE, NOW, LATER, serial=9, **PERMIT)
    assert line.startswith(key_line.split()[0] + "-cert-v01@openssh.com ")
    cert = ssh.load_ssh_public_identity(line.encode())
    assert isinstance(cert, ssh.SSHCertificate)
    cert.verify_cert_signature()
    assert cert.public_key() == key.public_key()
    assert cert.serial == 9
    assert ssh_public_key_text(cert.signature_key()) == signers["user_ssh"].public_key_text
    assert list(cert.extensions) == sorted(cert.extensions)
    assert identity_from_ssh_cert(cert) == issued_now(ALICE)
    path = tmp_path / "id-cert.pub"
    path.write_text(line + "\n")
    result = _run("ssh-keygen", "-L", "-f", path)
    assert result.returncode == 0, result.stderr
    assert 'Key ID: "alice"' in result.stdout


def test_user_without_logins_gets_a_principal_no_account_can_have(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    # No principals at all would mean "every login" to sshd.
    nobody = Identity(username="carol", roles=("viewer",), expires=LATER)
    line = signers["user_ssh"].sign_user_ssh(
        public_key_openssh(user_key), nobody, NOW, LATER, **PERMIT
    )
    cert = ssh.load_ssh_public_identity(line.encode())
    assert isinstance(cert, ssh.SSHCertificate)
    (principal,) = cert.valid_principals
    assert principal.decode().startswith(NO_LOGIN_PRINCIPAL_PREFIX)
    assert identity_from_ssh_cert(cert).logins == ()


def test_user_cert_times_must_be_sane(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    line = public_key_openssh(user_key)
    with pytest.raises(BadParameter, match="expire before"):
        signers["user_ssh"].sign_user_ssh(line, ALICE, LATER, NOW, **PERMIT)
    with pytest.raises(BadParameter, match="time zone"):
        signers["user_ssh"].sign_user_ssh(line, ALICE, NOW.replace(tzinfo=None), LATER, **PERMIT)


def test_malformed_user_key_is_a_bad_parameter(signers: dict[str, CASigner]) -> None:
    with pytest.raises(BadParameter, match="malformed ssh public key"):
        signers["user_ssh"].sign_user_ssh("ssh-ed25519 bm90IGEga2V5", ALICE, NOW, LATER, **PERMIT)


def test_ssh_keygen_reads_the_user_cert(
    tmp_path: Path, signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "id-cert.pub"
    path.write_text(
        signers["user_ssh"].sign_user_ssh(
            public_key_openssh(user_key), ALICE, NOW, LATER, serial=42, **PERMIT
        )
        + "\n"
    )
    result = _run("ssh-keygen", "-L", "-f", path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "alice"' in out
    assert "Serial: 42" in out
    assert "Valid: from 2029-12-31T23:59:00 to 2030-01-01T08:00:00" in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["alice", "ubuntu"]
    assert "Critical Options: (none)" in out
    extensions = [line.split()[0] for line in out.split("Extensions:")[1].strip().splitlines()]
    assert extensions == sorted(
        [
            "permit-pty",
            "permit-port-forwarding",
            "permit-user-rc",
            SSH_EXT_ROLES,
            SSH_EXT_TRAITS,
            SSH_EXT_REQUESTS,
            SSH_EXT_MFA,
        ]
    )
    # The CA shown is ours.
    ca_line = signers["user_ssh"].public_key_text
    assert f"Signing CA: ED25519 {_fingerprint(ca_line)}" in out


# ---------------------------------------------------------------------------- SSH host


def test_host_cert_names_the_host(tmp_path: Path, signers: dict[str, CASigner]) -> None:
    host_key = ed25519.Ed25519PrivateKey.generate()
    line = signers["host_ssh"].sign_host_ssh(
        public_key_text(host_key.public_key()),
        "3f6c-node",
        ["db-1", "10.0.0.5", "3f6c-node", ""],
        LATER,
        valid_after=NOW,
    )
    cert = ssh.load_ssh_public_identity(line.encode())
    assert isinstance(cert, ssh.SSHCertificate)
    assert cert.type == ssh.SSHCertificateType.HOST
    assert cert.key_id == b"3f6c-node"
    assert cert.valid_principals == [b"3f6c-node", b"db-1", b"10.0.0.5"]
    assert cert.critical_options == {} and cert.extensions == {}
    path = tmp_path / "host-cert.pub"
    path.write_text(line + "\n")
    result = _run("ssh-keygen", "-L", "-f", path)
    assert result.returncode == 0, result.stderr
    assert "ssh-ed25519-cert-v01@openssh.com host certificate" in result.stdout
    assert 'Key ID: "3f6c-node"' in result.stdout
    assert "Valid: from 2029-12-31T23:59:00 to 2030-01-01T08:00:00" in result.stdout


# ---------------------------------------------------------------------------- trust lines


def test_user_ca_trust_line_is_a_public_key_file(
    tmp_path: Path, cas: dict[str, CertAuthority]
) -> None:
    line = user_ca_trust_line(cas["user_ssh"])
    assert line == f"{cas['user_ssh'].spec.active_keys[0].public} certgate user CA example"
    path = tmp_path / "trusted_user_ca"
    path.write_text(line + "\n")
    result = _run("ssh-keygen", "-l", "-f", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == _fingerprint(line)
    assert "certgate user CA example (ED25519)" in result.stdout


def test_known_hosts_line_marks_the_host_ca(tmp_path: Path, cas: dict[str, CertAuthority]) -> None:
    line = host_ca_known_hosts_line(cas["host_ssh"])
    key = cas["host_ssh"].spec.active_keys[0].public
    assert line == f"@cert-authority * {key} type=host"
    assert host_ca_known_hosts_line(cas["host_ssh"], "*.example.com").startswith(
        "@cert-authority *.example.com ssh-ed25519 "
    )
    path = tmp_path / "known_hosts"
    path.write_text(line + "\n")
    # ssh-keygen -F finds the entry for any host and reports it as a CA line.
    result = _run("ssh-keygen", "-F", "db-1.example.com", "-f", path)
    assert result.returncode == 0, result.stderr
    assert "found: line 1 CA" in result.stdout


def test_trust_lines_refuse_the_wrong_authority(cas: dict[str, CertAuthority]) -> None:
    with pytest.raises(BadParameter):
        user_ca_trust_line(cas["host_ssh"])
    with pytest.raises(BadParameter):
        host_ca_known_hosts_line(cas["user_ssh"])
    with pytest.raises(BadParameter):
        host_ca_known_hosts_line(cas["host_ssh"], "a b")


def test_trust_lines_list_every_active_key(cas: dict[str, CertAuthority]) -> None:
    other = generate_authority("user_ssh", "example", NOW).spec.active_keys[0]
    ca = cas["user_ssh"]
    rotating = ca.model_copy(
        update={"spec": ca.spec.model_copy(update={"active_keys": [*ca.spec.active_keys, other]})}
    )
    lines = user_ca_trust_line(rotating).splitlines()
    assert [line.split()[1] for line in lines] == [
        ca.spec.active_keys[0].public.split()[1],
        other.public.split()[1],
    ]


# ---------------------------------------------------------------------------- X.509


def _tls_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_tls_cert_carries_the_identity(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    cert = _tls_cert(signers["user_tls"].sign_tls(user_key.public_key(), ALICE, NOW, LATER))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    roles = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert roles == ["dev", "auditor"]
    ext = cert.extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert Identity.from_json(ext.value.value) == ALICE
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    ca_cert = signers["user_tls"].certificate
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == LATER
    assert identity_from_x509(cert) == issued_now(ALICE)


def test_server_tls_cert_has_names_and_server_auth(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    node = Identity(username="3f6c-node", roles=("Node",), kind="service", expires=LATER)
    pem = signers["host_tls"].sign_tls(
        user_key.public_key(),
        node,
        NOW,
        LATER,
        dns_names=["db-1", "db-1.example.com"],
        ip_addresses=["10.0.0.5", ipaddress.ip_address("::1")],
        server=True,
    )
    cert = _tls_cert(pem)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db-1", "db-1.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert identity_from_x509(cert) == issued_now(node)
    with pytest.raises(BadParameter, match="invalid ip address"):
        signers["host_tls"].sign_tls(
            user_key.public_key(), node, NOW, LATER, ip_addresses=["db-1"], server=True
        )


def test_tls_signer_takes_pem_or_openssh_public_keys(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    pem = user_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for key in (pem, pem.decode(), public_key_openssh(user_key)):
        cert = _tls_cert(signers["user_tls"].sign_tls(key, ALICE, NOW, LATER))
        assert cert.public_key() == user_key.public_key()
    with pytest.raises(BadParameter, match="malformed public key"):
        signers["user_tls"].sign_tls("-----BEGIN PUBLIC KEY-----\nAA==\n", ALICE, NOW, LATER)


def test_long_username_is_cut_in_the_common_name_only(
    signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    long_name = "a-very-long-user-name-that-is-an-email-address@subdivision.example.com"
    user = Identity(username=long_name, expires=LATER)
    cert = _tls_cert(signers["user_tls"].sign_tls(user_key.public_key(), user, NOW, LATER))
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(common_name, str) and long_name.startswith(common_name)
    assert identity_from_x509(cert).username == long_name


def test_openssl_reads_and_verifies_the_tls_cert(
    tmp_path: Path, signers: dict[str, CASigner], user_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf = tmp_path / "alice.pem"
    leaf.write_text(signers["user_tls"].sign_tls(user_key.public_key(), ALICE, NOW, LATER))
    ca = tmp_path / "ca.pem"
    ca.write_text(signers["user_tls"].certificate.public_bytes(serialization.Encoding.PEM).decode())
    text = _run("openssl", "x509", "-in", leaf, "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert "Subject: O = dev, O = auditor, CN = alice" in text.stdout
    assert "Issuer: O = example, CN = user_tls CA example" in text.stdout
    assert "TLS Web Client Authentication" in text.stdout
    assert IDENTITY_EXTENSION_OID.dotted_string in text.stdout
    at = str(int((NOW + timedelta(hours=1)).timestamp()))
    verify = _run("openssl", "verify", "-attime", at, "-purpose", "sslclient", "-CAfile", ca, leaf)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip().endswith(": OK")


# ---------------------------------------------------------------------------- pin


def test_ca_pin_is_the_sha256_of_the_public_key_info(cas: dict[str, CertAuthority]) -> None:
    ca = cas["host_tls"]
    cert = x509.load_pem_x509_certificate(ca.spec.active_keys[0].public.encode())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = "sha256:" + hashlib.sha256(spki).hexdigest()
    assert ca_pin(ca) == expected
    assert ca_pin(cert) == expected
    assert ca_pin(ca.spec.active_keys[0].public) == expected
    assert ca_pin(ca.without_secrets()) == expected
    assert ca_pin(cas["user_tls"]) != expected
    with pytest.raises(BadParameter):
        ca_pin(cas["user_ssh"])


# ---------------------------------------------------------------------------- real sshd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningSshd:
    port: int
    log: Path
    known_hosts: Path


@contextlib.contextmanager
def run_sshd(
    workdir: Path, trusted_user_ca: str, host_key: ed25519.Ed25519PrivateKey, host_cert: str
) -> Iterator[RunningSshd]:
    """A throwaway OpenSSH sshd on a free loopback port that trusts only certificates.

    `trusted_user_ca` is TrustedUserCAKeys content; the host presents `host_cert`.
    Logins are by certificate only, and the login must be a principal of the
    certificate (AuthorizedPrincipalsFile none).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    key_path = workdir / "ssh_host_ed25519_key"
    key_path.write_bytes(private_key_to_openssh(host_key))
    key_path.chmod(0o600)
    (workdir / "ssh_host_ed25519_key-cert.pub").write_text(host_cert + "\n")
    (workdir / "trusted_user_ca").write_text(trusted_user_ca + "\n")
    log = workdir / "sshd.log"
    for _attempt in range(3):
        port = free_port()
        config = workdir / "sshd_config"
        config.write_text(
            f"""
ListenAddress 127.0.0.1:{port}
HostKey {key_path}
HostCertificate {workdir / "ssh_host_ed25519_key-cert.pub"}
PidFile {workdir / "sshd.pid"}
TrustedUserCAKeys {workdir / "trusted_user_ca"}
AuthorizedPrincipalsFile none
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
LogLevel VERBOSE
"""
        )
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            if _wait_for_port(port, process):
                yield RunningSshd(port=port, log=log, known_hosts=workdir / "known_hosts")
                return
        finally:
            process.terminate()
            process.wait(timeout=10)
    raise RuntimeError(f"sshd did not start: {log.read_text()}")


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # lost the port to someone else, or a config error
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def sshd(
    tmp_path_factory: pytest.TempPathFactory,
    cas: dict[str, CertAuthority],
    signers: dict[str, CASigner],
) -> Iterator[RunningSshd]:
    if not os.path.exists(SSHD):
        pytest.fail("sshd is not installed: make test installs openssh-server")
    workdir = tmp_path_factory.mktemp("sshd")
    host_key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.now(UTC)
    host_cert = signers["host_ssh"].sign_host_ssh(
        public_key_text(host_key.public_key()), "node-1", ["127.0.0.1"], now + timedelta(hours=1)
    )
    with run_sshd(workdir, user_ca_trust_line(cas["user_ssh"]), host_key, host_cert) as server:
        server.known_hosts.write_text(host_ca_known_hosts_line(cas["host_ssh"]) + "\n")
        yield server


def _ssh_true(
    sshd: RunningSshd, tmp_path: Path, key: ec.EllipticCurvePrivateKey, cert: str
) -> subprocess.CompletedProcess[str]:
    key_path = tmp_path / "id_ecdsa"
    key_path.write_bytes(private_key_to_openssh(key))
    key_path.chmod(0o600)
    cert_path = tmp_path / "id_ecdsa-cert.pub"
    cert_path.write_text(cert + "\n")
    return _run(
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        key_path,
        "-o",
        f"CertificateFile={cert_path}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        # The host is verified for real, through its certificate and our known_hosts line.
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-p",
        str(sshd.port),
        f"{current_user()}@127.0.0.1",
        "true",
    )


def _user_cert(signer: CASigner, key: ec.EllipticCurvePrivateKey, logins: tuple[str, ...]) -> str:
    now = datetime.now(UTC)
    identity = Identity(
        username="alice",
        roles=("dev",),
        traits={"logins": list(logins)},
        logins=logins,
        request_ids=("req-1",),
        mfa_verified=True,
        expires=now + timedelta(minutes=5),
    )
    return signer.sign_user_ssh(
        public_key_openssh(key),
        identity,
        now,
        identity.expires,
        permit_port_forwarding=True,
        permit_agent_forwarding=True,
    )


def test_stock_sshd_accepts_our_user_cert(
    sshd: RunningSshd, tmp_path: Path, signers: dict[str, CASigner]
) -> None:
    key = generate_private_key()
    cert = _user_cert(signers["user_ssh"], key, (current_user(), "ubuntu"))
    result = _ssh_true(sshd, tmp_path, key, cert)
    assert result.returncode == 0, result.stderr + sshd.log.read_text()
    assert "ID alice" in sshd.log.read_text()  # sshd logged our key id


def test_stock_sshd_refuses_a_login_that_is_not_a_principal(
    sshd: RunningSshd, tmp_path: Path, signers: dict[str, CASigner]
) -> None:
    key = generate_private_key()
    result = _ssh_true(sshd, tmp_path, key, _user_cert(signers["user_ssh"], key, ("ubuntu",)))
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_stock_sshd_refuses_another_clusters_cert(sshd: RunningSshd, tmp_path: Path) -> None:
    other = CASigner(generate_authority("user_ssh", "elsewhere", datetime.now(UTC)))
    key = generate_private_key()
    result = _ssh_true(sshd, tmp_path, key, _user_cert(other, key, (current_user(),)))
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


LONG_CLUSTER = "a-cluster-whose-name-is-longer-than-any-common-name.example.internal"


def test_ca_subjects_differ_whatever_the_cluster_name_length() -> None:
    # Cut at 64 bytes, "<cluster> host_tls CA" and "<cluster> user_tls CA" were one name.
    subjects = {
        x509.load_pem_x509_certificate(
            generate_authority(kind, LONG_CLUSTER, NOW).spec.active_keys[0].public.encode()
        ).subject
        for kind in ("host_tls", "user_tls")
    }
    assert len(subjects) == 2


@pytest.mark.parametrize(
    "name", ["", "bad name", "ünïcode.example", "a..b", "-dash.example", "x" * 64, "a/b"]
)
def test_cluster_names_no_certificate_can_carry_are_refused(name: str) -> None:
    with pytest.raises(BadParameter, match="invalid cluster name"):
        check_cluster_name(name)
    with pytest.raises(BadParameter, match="invalid cluster name"):
        generate_authority("host_tls", name, NOW)


def test_a_certificate_is_placed_by_its_issuer_key_not_its_issuer_name() -> None:
    # Two CAs with one subject (what a long cluster name gave the host and user CAs
    # before): only the key that signed counts.
    first, second = (CASigner(generate_authority("host_tls", "same", NOW)) for _ in range(2))
    assert first.certificate.subject == second.certificate.subject
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    leaf = _tls_cert(second.sign_tls(key, ALICE, NOW, LATER))
    assert not issued_by(leaf, [first.certificate])
    assert issued_by(leaf, [first.certificate, second.certificate])
