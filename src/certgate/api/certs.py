"""Reading and checking the certificates certgate issues, and the client's key helpers.

Every service and the client use this module; it only parses and verifies, it never
signs (signing lives in `certgate.auth.ca`, next to the CA private keys).

    identity_from_ssh_cert(cert)                          -> Identity   (no trust check)
    identity_from_x509(cert)                              -> Identity   (no trust check)
    verify_ssh_user_cert(cert, trusted_keys, now, login)  -> Identity   or AccessDenied
    verify_x509_client_cert(cert, trusted_cas, now)       -> Identity   or AccessDenied

The `identity_from_*` functions trust their input: call them only on certificates that
were verified (by the `verify_*` functions, by the TLS handshake or by asyncssh).
"""

from __future__ import annotations

import binascii
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import ssh
from cryptography.x509.oid import ExtendedKeyUsageOID

from certgate.api.identity import (
    IDENTITY_OID,
    LEGACY_IDENTITY_OID,
    SSH_EXT_MFA,
    SSH_EXT_REQUESTS,
    SSH_EXT_RESOURCES,
    SSH_EXT_ROLES,
    SSH_EXT_TRAITS,
    Identity,
)
from certgate.errors import AccessDenied, BadParameter

# A certificate with no principals is valid for *every* login in OpenSSH, so a user
# allowed no logins gets this one instead. A Unix user name cannot start with "-".
NO_LOGIN_PRINCIPAL_PREFIX = "-certgate-nologin-"

IDENTITY_EXTENSION_OID = x509.ObjectIdentifier(IDENTITY_OID)
_LEGACY_EXTENSION_OID = x509.ObjectIdentifier(LEGACY_IDENTITY_OID)

# The largest instant a datetime holds; OpenSSH writes 2**64-1 for "forever".
_MAX_TIMESTAMP = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())

SSHCertInput = ssh.SSHCertificate | bytes | str
X509Input = x509.Certificate | bytes | str


# ---------------------------------------------------------------------------- time


def to_ssh_time(moment: datetime) -> int:
    """Seconds since the epoch, as SSH certificates count validity."""
    if moment.tzinfo is None:
        raise BadParameter("certificate times must carry a time zone")
    return max(0, int(moment.timestamp()))


def from_ssh_time(seconds: int) -> datetime:
    return datetime.fromtimestamp(min(seconds, _MAX_TIMESTAMP), UTC)


# ---------------------------------------------------------------------------- SSH


def load_ssh_certificate(cert: SSHCertInput) -> ssh.SSHCertificate:
    """An OpenSSH certificate line (or a parsed certificate) as a cryptography object."""
    if isinstance(cert, ssh.SSHCertificate):
        return cert
    data = cert.encode() if isinstance(cert, str) else cert
    try:
        loaded = ssh.load_ssh_public_identity(data.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"malformed ssh certificate: {exc}") from exc
    if not isinstance(loaded, ssh.SSHCertificate):
        raise BadParameter("expected an ssh certificate, got a plain public key")
    return loaded


def _json_extension(cert: ssh.SSHCertificate, name: str, default: Any) -> Any:
    raw = cert.extensions.get(name.encode())
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadParameter(f"ssh certificate extension {name} is not valid json") from exc


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadParameter(f"{what} must be a json list of strings")
    return tuple(value)


def identity_from_ssh_cert(cert: SSHCertInput) -> Identity:
    """The identity an SSH user certificate speaks for (its signature is not checked)."""
    parsed = load_ssh_certificate(cert)
    try:
        username = parsed.key_id.decode()
        principals = [p.decode() for p in parsed.valid_principals]
    except UnicodeDecodeError as exc:
        raise BadParameter("ssh certificate key id or principals are not utf-8") from exc
    traits = _json_extension(parsed, SSH_EXT_TRAITS, {})
    if not isinstance(traits, dict):
        raise BadParameter(f"ssh certificate extension {SSH_EXT_TRAITS} must be a json object")
    what = "ssh certificate extension"
    return Identity(
        username=username,
        roles=_string_list(_json_extension(parsed, SSH_EXT_ROLES, []), f"{what} {SSH_EXT_ROLES}"),
        traits={
            str(key): list(_string_list(values, f"{what} {SSH_EXT_TRAITS}"))
            for key, values in traits.items()
        },
        logins=tuple(p for p in principals if not p.startswith(NO_LOGIN_PRINCIPAL_PREFIX)),
        request_ids=_string_list(
            _json_extension(parsed, SSH_EXT_REQUESTS, []), f"{what} {SSH_EXT_REQUESTS}"
        ),
        resources=_string_list(
            _json_extension(parsed, SSH_EXT_RESOURCES, []), f"{what} {SSH_EXT_RESOURCES}"
        ),
        expires=from_ssh_time(parsed.valid_before),
        mfa_verified=SSH_EXT_MFA.encode() in parsed.extensions,
        kind="user",
        issued=from_ssh_time(parsed.valid_after),
    )


def _ssh_key_text(line: str) -> str | None:
    """The "type base64" part of an OpenSSH public key, trust-file or known_hosts line."""
    fields = line.split()
    if fields and fields[0].startswith("@"):
        # "@cert-authority <hosts> <type> <base64> ..." (known_hosts)
        fields = fields[2:]
    if len(fields) < 2:
        return None
    return f"{fields[0]} {fields[1]}"


def load_ssh_public_key_text(
    text: str | bytes,
) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    """An OpenSSH public key line ("ecdsa-sha2-nistp256 AAAA... comment") as a key.

    The same key is put in both of a user's certificates, so the result is also what
    `sign_tls` takes.
    """
    data = text.encode() if isinstance(text, str) else text
    fast = _parse_common_ssh_public_key(data.strip())
    if fast is not None:
        return fast
    try:
        key = ssh.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm, NotImplementedError) as exc:
        # NotImplementedError: cryptography's word for a compressed EC point.
        raise BadParameter(f"malformed ssh public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        # RSA would work, but certgate clients only make ECDSA or Ed25519 keys, and
        # refusing the rest keeps weak key sizes out.
        raise BadParameter("ssh public key must be ecdsa or ed25519")
    return key


_SSH_KEY_LINE = re.compile(rb"\A(\S+)[ \t]+(\S+)")
_SSH_EC_CURVES: dict[bytes, ec.EllipticCurve] = {
    b"ecdsa-sha2-nistp256": ec.SECP256R1(),
    b"ecdsa-sha2-nistp384": ec.SECP384R1(),
    b"ecdsa-sha2-nistp521": ec.SECP521R1(),
}


def _take_sshstr(data: bytes, offset: int) -> tuple[bytes, int] | None:
    if offset + 4 > len(data):
        return None
    (length,) = struct.unpack_from(">I", data, offset)
    end = offset + 4 + length
    if end > len(data):
        return None
    return data[offset + 4 : end], end


def _parse_common_ssh_public_key(
    line: bytes,
) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | None:
    """The Ed25519 and ECDSA keys clients send, parsed directly; None for anything else.

    `cryptography`'s parser is pure Python and was the slowest step of a renewal after
    signing. This one takes the same checks for these key kinds (line format, inner key
    type, curve name, uncompressed point on the curve, nothing left over); whatever it
    does not accept goes to `cryptography`, which accepts it or says why not.
    """
    match = _SSH_KEY_LINE.match(line)
    if match is None:
        return None
    kind, body = match.group(1), match.group(2)
    if kind != b"ssh-ed25519" and kind not in _SSH_EC_CURVES:
        return None
    try:
        blob = binascii.a2b_base64(body)
    except binascii.Error:
        return None
    inner = _take_sshstr(blob, 0)
    if inner is None or inner[0] != kind:
        return None
    try:
        if kind == b"ssh-ed25519":
            raw = _take_sshstr(blob, inner[1])
            if raw is None or raw[1] != len(blob):
                return None
            return ed25519.Ed25519PublicKey.from_public_bytes(raw[0])
        curve = _take_sshstr(blob, inner[1])
        if curve is None or b"ecdsa-sha2-" + curve[0] != kind:
            return None
        point = _take_sshstr(blob, curve[1])
        if point is None or point[1] != len(blob) or not point[0] or point[0][0] != 4:
            return None
        return ec.EllipticCurvePublicKey.from_encoded_point(_SSH_EC_CURVES[kind], point[0])
    except ValueError:
        return None


def ssh_public_key_text(key: ssh.SSHPublicKeyTypes | ssh.SSHCertPublicKeyTypes) -> str:
    """A public key as "type base64", with no comment."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def verify_ssh_user_cert(
    cert: SSHCertInput,
    trusted_ca_public_keys: Sequence[str],
    now: datetime,
    login: str | None = None,
) -> Identity:
    """Check an SSH user certificate the way sshd would, then return its identity.

    `trusted_ca_public_keys` are OpenSSH public key lines (comments and a leading
    `@cert-authority <hosts>` are allowed). Every refusal is AccessDenied.
    """
    try:
        parsed = load_ssh_certificate(cert)
    except BadParameter as exc:
        raise AccessDenied(exc.message) from exc
    if parsed.type != ssh.SSHCertificateType.USER:
        raise AccessDenied("a host certificate cannot be used as a user certificate")
    try:
        signer = ssh_public_key_text(parsed.signature_key())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AccessDenied("certificate signature key is malformed") from exc
    trusted = {_ssh_key_text(line) for text in trusted_ca_public_keys for line in text.splitlines()}
    if signer not in trusted:
        raise AccessDenied("certificate is not signed by this cluster's user CA")
    try:
        parsed.verify_cert_signature()
    except (InvalidSignature, ValueError) as exc:
        raise AccessDenied("certificate signature is invalid") from exc
    if parsed.critical_options:
        # sshd refuses critical options it does not know; certgate enforces none.
        names = ", ".join(sorted(name.decode(errors="replace") for name in parsed.critical_options))
        raise AccessDenied(
            f"certificate carries critical options certgate does not enforce: {names}"
        )
    seconds = to_ssh_time(now)
    if seconds < parsed.valid_after:
        raise AccessDenied(
            f"certificate is not valid before {from_ssh_time(parsed.valid_after).isoformat()}"
        )
    if seconds >= parsed.valid_before:
        raise AccessDenied(
            f"certificate expired at {from_ssh_time(parsed.valid_before).isoformat()}"
        )
    try:
        identity = identity_from_ssh_cert(parsed)
    except BadParameter as exc:
        raise AccessDenied(exc.message) from exc
    if login is not None and login not in identity.logins:
        raise AccessDenied(f'login "{login}" is not a principal of this certificate')
    return identity


# ---------------------------------------------------------------------------- X.509


def load_x509_certificate(cert: X509Input) -> x509.Certificate:
    """A PEM certificate (or a parsed one) as a cryptography object."""
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode() if isinstance(cert, str) else cert
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise BadParameter(f"malformed x.509 certificate: {exc}") from exc


def identity_from_x509(cert: x509.Certificate) -> Identity:
    """The identity an X.509 certificate speaks for (its signature is not checked).

    The expiry and issue time are the certificate's own notAfter and notBefore,
    whatever the embedded JSON says.
    """
    try:
        extension = cert.extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    except x509.ExtensionNotFound:
        try:
            extension = cert.extensions.get_extension_for_oid(_LEGACY_EXTENSION_OID)
        except x509.ExtensionNotFound as exc:
            raise BadParameter("certificate carries no certgate identity extension") from exc
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise BadParameter("certgate identity extension is malformed")
    try:
        identity = Identity.from_json(value.value)
        if not isinstance(identity.traits, dict):
            raise TypeError("traits must be an object")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadParameter(f"certgate identity extension is malformed: {exc}") from exc
    return replace(identity, expires=cert.not_valid_after_utc, issued=cert.not_valid_before_utc)


def issued_by(cert: x509.Certificate, ca_certs: Sequence[x509.Certificate]) -> bool:
    """Whether one of `ca_certs` signed `cert`: decided by the CA's key, not its name.

    Two CAs may carry the same subject (an old cluster's CA names were cut to 64 bytes),
    so every CA of that name is tried and only a signature that verifies counts.
    """
    for ca in ca_certs:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return True
    return False


def verify_x509_client_cert(
    cert: X509Input,
    trusted_ca_certs: Sequence[X509Input],
    now: datetime,
) -> Identity:
    """Check a client certificate against the cluster's CA certificates (chain of one).

    The issuer must be one of `trusted_ca_certs` and its signature must verify with
    that CA's key; the certificate must be valid at `now` and allowed for client
    authentication. Every refusal is AccessDenied.
    """
    try:
        parsed = load_x509_certificate(cert)
        cas = [load_x509_certificate(ca) for ca in trusted_ca_certs]
    except BadParameter as exc:
        raise AccessDenied(exc.message) from exc
    if not any(ca.subject == parsed.issuer for ca in cas):
        raise AccessDenied("certificate is not issued by this cluster's CA")
    if not issued_by(parsed, cas):
        raise AccessDenied("certificate signature is invalid")
    if now < parsed.not_valid_before_utc:
        raise AccessDenied(
            f"certificate is not valid before {parsed.not_valid_before_utc.isoformat()}"
        )
    if now > parsed.not_valid_after_utc:
        raise AccessDenied(f"certificate expired at {parsed.not_valid_after_utc.isoformat()}")
    try:
        usage = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise AccessDenied("certificate is not allowed for client authentication")
    try:
        return identity_from_x509(parsed)
    except BadParameter as exc:
        raise AccessDenied(exc.message) from exc


# ---------------------------------------------------------------------------- keys


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, the kind certgate clients and hosts hold."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_to_openssh(key: ssh.SSHPrivateKeyTypes) -> bytes:
    """The unencrypted OpenSSH private key file `ssh -i` reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def private_key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, for TLS clients."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_openssh(key: ec.EllipticCurvePrivateKey) -> str:
    """The OpenSSH public key line ("ecdsa-sha2-nistp256 AAAA...") of a private key."""
    return ssh_public_key_text(key.public_key())
