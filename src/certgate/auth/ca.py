"""The cluster's four certificate authorities: creating them and signing with them.

    generate_authority("user_ssh", cluster, now)  -> CertAuthority (private key inside)
    CASigner(ca)                                  -> signer; loads the private key once
        .sign_user_ssh(pubkey, identity, ...)     -> "ecdsa-sha2-nistp256-cert-v01@openssh.com ..."
        .sign_host_ssh(pubkey, host_id, ...)      -> OpenSSH host certificate line
        .sign_tls(pubkey, identity, ...)          -> PEM client (or client+server) certificate
    user_ca_trust_line(ca)                        -> line for sshd's TrustedUserCAKeys
    host_ca_known_hosts_line(ca)                  -> "@cert-authority * ssh-ed25519 ..."
    ca_pin(tls_ca)                                -> "sha256:<hex of the CA's SPKI>"

SSH CAs hold Ed25519 keys, TLS CAs ECDSA P-256 keys with a self-signed certificate.
X.509 certificates are built with `cryptography`; OpenSSH certificates are encoded here
(`_ssh_certificate`, the format of OpenSSH's PROTOCOL.certkeys) and signed with the CA's
Ed25519 key: `cryptography`'s `SSHCertificateBuilder` encodes in Python and then parses
its own output back, which was half the cost of a renewal's SSH certificate. Both are
read back by `certgate.api.certs` (and the tests check them with `ssh-keygen` and a
stock sshd). Signing is on the hot path of every login and renewal, so everything that
does not depend on the request is prepared once in `CASigner.__init__`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import secrets
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.api.authority import (
    CA_TYPES,
    CAKeyPair,
    CAType,
    CertAuthority,
    CertAuthoritySpec,
)
from certgate.api.certs import (
    IDENTITY_EXTENSION_OID,
    NO_LOGIN_PRINCIPAL_PREFIX,
    load_ssh_public_key_text,
    load_x509_certificate,
    ssh_public_key_text,
    to_ssh_time,
)
from certgate.api.identity import (
    SSH_EXT_MFA,
    SSH_EXT_REQUESTS,
    SSH_EXT_ROLES,
    SSH_EXT_TRAITS,
    Identity,
)
from certgate.api.meta import Metadata
from certgate.errors import BadParameter

# Certificates start a little in the past so a host whose clock lags ours accepts them.
CLOCK_SKEW = timedelta(minutes=1)
CA_VALIDITY = timedelta(days=3650)

_SSH_TYPES: tuple[CAType, ...] = ("user_ssh", "host_ssh")
# RFC 5280's upper bound for a common name, which cryptography enforces (in bytes).
_MAX_COMMON_NAME = 64


def generate_authority(ca_type: str, cluster_name: str, now: datetime) -> CertAuthority:
    """A new CA of `ca_type` with a fresh key (and, for TLS, a self-signed certificate)."""
    if ca_type not in CA_TYPES:
        raise BadParameter(f"unknown ca type {ca_type!r}, expected one of {', '.join(CA_TYPES)}")
    check_cluster_name(cluster_name)
    kind: CAType = next(t for t in CA_TYPES if t == ca_type)
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    if kind in _SSH_TYPES:
        private = ed25519.Ed25519PrivateKey.generate()
        public = ssh_public_key_text(private.public_key())
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        public = _self_signed_ca_cert(private, kind, cluster_name, now)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return CertAuthority(
        metadata=Metadata(name=kind),
        spec=CertAuthoritySpec(
            type=kind,
            cluster_name=cluster_name,
            active_keys=[CAKeyPair(public=public, private=pem)],
        ),
    )


def _self_signed_ca_cert(
    key: ec.EllipticCurvePrivateKey, ca_type: str, cluster_name: str, now: datetime
) -> str:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _common_name(cluster_name)),
            # The CA type first: however long the cluster name (and however it is cut),
            # the four CAs' subjects differ.
            x509.NameAttribute(NameOID.COMMON_NAME, _common_name(f"{ca_type} CA {cluster_name}")),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# A cluster name is a DNS name (nodes are reached as `<node>.<cluster>`, which goes in
# their certificates' subjectAltName): ASCII letters, digits, "-" and "_", in dot-separated
# labels of up to 63 characters, 253 in all.
_CLUSTER_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def check_cluster_name(name: str) -> None:
    """BadParameter unless `name` can be written into every certificate certgate issues."""
    if not name or len(name) > 253 or not all(_CLUSTER_LABEL.match(p) for p in name.split(".")):
        raise BadParameter(
            f"invalid cluster name {name!r}: use a DNS name (ASCII letters, digits, - and _ "
            "in dot-separated labels of up to 63 characters, 253 in all)"
        )


def _common_name(text: str) -> str:
    # Longer names (e-mail addresses, say) are cut; the identity extension, not the CN,
    # is what certgate reads back, so nothing is lost.
    encoded = text.encode()
    if len(encoded) <= _MAX_COMMON_NAME:
        return text
    return encoded[:_MAX_COMMON_NAME].decode(errors="ignore")


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _signing_key(ca: CertAuthority) -> CAKeyPair:
    # The first active key signs; any further keys are trusted only (during rotation).
    for pair in ca.spec.active_keys:
        if pair.private:
            return pair
    raise BadParameter(f"certificate authority {ca.name} has no private key here")


def _time_range(not_before: datetime, not_after: datetime) -> tuple[datetime, datetime]:
    if not_before.tzinfo is None or not_after.tzinfo is None:
        raise BadParameter("certificate times must carry a time zone")
    if not_after <= not_before:
        raise BadParameter("certificate would expire before it becomes valid")
    return not_before - CLOCK_SKEW, not_after


# What a signer accepts as the key to certify: an OpenSSH public key line, or the key
# itself (so a caller issuing an SSH and an X.509 certificate parses it only once).
SubjectKey = str | bytes | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def _ssh_subject_key(key: SubjectKey) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    if isinstance(key, str | bytes):
        return load_ssh_public_key_text(key)
    return key


def _load_tls_subject_key(
    public_key: CertificatePublicKeyTypes | str | bytes,
) -> CertificatePublicKeyTypes:
    if not isinstance(public_key, str | bytes):
        return public_key
    data = public_key.encode() if isinstance(public_key, str) else public_key
    if not data.lstrip().startswith(b"-----BEGIN"):
        return load_ssh_public_key_text(data)
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"malformed public key: {exc}") from exc
    if not isinstance(loaded, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise BadParameter("tls public key must be ecdsa or ed25519")
    return loaded


_SUBJECT_CACHE_SIZE = 4096
_USER_CERT = 1  # SSH2_CERT_TYPE_USER
_HOST_CERT = 2  # SSH2_CERT_TYPE_HOST
_SSH_CURVES = {"secp256r1": b"nistp256", "secp384r1": b"nistp384", "secp521r1": b"nistp521"}


def _sshstr(data: bytes) -> bytes:
    """An SSH wire-format string: uint32 length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def _ssh_key_fields(
    key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
) -> tuple[bytes, bytes]:
    """The key's SSH type name and the fields that follow the type in its key blob."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return b"ssh-ed25519", _sshstr(raw)
    curve = _SSH_CURVES.get(key.curve.name)
    if curve is None:
        raise BadParameter(f"ssh public key on unsupported curve {key.curve.name}")
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b"ecdsa-sha2-" + curve, _sshstr(curve) + _sshstr(point)


class CASigner:
    """Signs certificates with one CA's key.

    Build one per CA and keep it: the private key is parsed, and the extensions that are
    the same for every certificate are made, once here.
    """

    def __init__(self, ca: CertAuthority) -> None:
        self.type: CAType = ca.spec.type
        self.cluster_name = ca.spec.cluster_name
        pair = _signing_key(ca)
        try:
            key = serialization.load_pem_private_key(pair.private.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise BadParameter(
                f"private key of certificate authority {ca.name} is malformed"
            ) from exc
        self._ssh_key: ed25519.Ed25519PrivateKey | None = None
        self._tls_key: ec.EllipticCurvePrivateKey | None = None
        self._public_key_text = ""
        self._certificate: x509.Certificate | None = None
        if self.type in _SSH_TYPES:
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise BadParameter(f"certificate authority {ca.name} must hold an ed25519 key")
            self._ssh_key = key
            self._public_key_text = ssh_public_key_text(key.public_key())
            # The "signature key" field of every certificate: the CA's public key blob.
            self._ssh_ca_blob = base64.b64decode(self._public_key_text.split()[1])
            return
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise BadParameter(f"certificate authority {ca.name} must hold an ecdsa key")
        self._tls_key = key
        self._certificate = load_x509_certificate(pair.public)
        if self._certificate.public_key() != key.public_key():
            raise BadParameter(f"certificate of authority {ca.name} does not match its key")
        self._issuer = self._certificate.subject
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._leaf = x509.BasicConstraints(ca=False, path_length=None)
        self._usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        self._client_eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        self._server_eku = x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        )
        # Builders are immutable: these hold the issuer and the extensions every leaf
        # certificate has, and each certificate adds its own fields to a copy.
        self._subjects: dict[tuple[str, tuple[str, ...]], x509.Name] = {}
        self._client_base = self._base_builder(self._client_eku)
        self._server_base = self._base_builder(self._server_eku)

    def _subject(self, username: str, roles: tuple[str, ...]) -> x509.Name:
        """O = each role, CN = the user name; kept, since a user renews with the same."""
        key = (username, roles)
        subject = self._subjects.get(key)
        if subject is None:
            attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, role) for role in roles]
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, _common_name(username)))
            subject = x509.Name(attributes)
            if len(self._subjects) >= _SUBJECT_CACHE_SIZE:
                del self._subjects[next(iter(self._subjects))]  # the oldest
            self._subjects[key] = subject
        return subject

    def _base_builder(self, eku: x509.ExtendedKeyUsage) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .issuer_name(self._issuer)
            .add_extension(self._leaf, critical=True)
            .add_extension(self._usage, critical=True)
            .add_extension(eku, critical=False)
            .add_extension(self._aki, critical=False)
        )

    @property
    def public_key_text(self) -> str:
        """The signing key as "ssh-ed25519 AAAA..." (SSH CAs only)."""
        self._require("have an ssh public key", *_SSH_TYPES)
        return self._public_key_text

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate leaf certificates chain to (TLS CAs only)."""
        self._require("have a ca certificate", "user_tls", "host_tls")
        assert self._certificate is not None
        return self._certificate

    def _require(self, what: str, *types: CAType) -> None:
        if self.type not in types:
            raise BadParameter(f"a {self.type} certificate authority cannot {what}")

    # ------------------------------------------------------------------------ SSH

    def sign_user_ssh(
        self,
        public_key: SubjectKey,
        identity: Identity,
        valid_after: datetime,
        valid_before: datetime,
        *,
        permit_pty: bool = True,
        permit_port_forwarding: bool,
        permit_agent_forwarding: bool,
        permit_x11: bool = False,
        permit_user_rc: bool = True,
        serial: int | None = None,
    ) -> str:
        """An OpenSSH user certificate for `identity`, as one public key line.

        `public_key` is the user's OpenSSH public key line (or the parsed key).

        Key id = username, principals = logins, extensions = the permit-* flags plus the
        identity's roles, traits, access requests and MFA mark. Never critical options:
        sshd refuses a certificate with one it does not know.
        """
        self._require("sign user ssh certificates", "user_ssh")
        assert self._ssh_key is not None
        start, end = _time_range(valid_after, valid_before)
        logins = identity.logins or (NO_LOGIN_PRINCIPAL_PREFIX + secrets.token_hex(8),)
        extensions = [
            (SSH_EXT_ROLES.encode(), _json(list(identity.roles))),
            (SSH_EXT_TRAITS.encode(), _json(identity.traits)),
        ]
        if identity.request_ids:
            extensions.append((SSH_EXT_REQUESTS.encode(), _json(list(identity.request_ids))))
        if identity.mfa_verified:
            extensions.append((SSH_EXT_MFA.encode(), b""))
        flags = (
            (b"permit-pty", permit_pty),
            (b"permit-port-forwarding", permit_port_forwarding),
            (b"permit-agent-forwarding", permit_agent_forwarding),
            (b"permit-X11-forwarding", permit_x11),
            (b"permit-user-rc", permit_user_rc),
        )
        extensions += [(name, b"") for name, allowed in flags if allowed]
        return self._ssh_certificate(
            _ssh_subject_key(public_key),
            _USER_CERT,
            identity.username,
            logins,
            start,
            end,
            extensions,
            serial,
        )

    def sign_host_ssh(
        self,
        public_key: SubjectKey,
        host_id: str,
        principals: Sequence[str],
        valid_before: datetime,
        *,
        valid_after: datetime | None = None,
        serial: int | None = None,
    ) -> str:
        """An OpenSSH host certificate for a node, valid for its id, names and addresses.

        `valid_after` defaults to the present (less the clock-skew allowance).
        """
        self._require("sign host ssh certificates", "host_ssh")
        assert self._ssh_key is not None
        if not host_id:
            raise BadParameter("a host certificate needs a host id")
        start, end = _time_range(valid_after or datetime.now(UTC), valid_before)
        names = list(dict.fromkeys([host_id, *(p for p in principals if p)]))
        return self._ssh_certificate(
            _ssh_subject_key(public_key), _HOST_CERT, host_id, names, start, end, [], serial
        )

    def _ssh_certificate(
        self,
        key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        cert_type: int,
        key_id: str,
        principals: Sequence[str],
        valid_after: datetime,
        valid_before: datetime,
        extensions: list[tuple[bytes, bytes]],
        serial: int | None,
    ) -> str:
        """An OpenSSH certificate (PROTOCOL.certkeys), signed, as one public key line.

        No critical options, ever (sshd refuses a certificate with one it does not
        know); extensions sorted by name, as OpenSSH requires.
        """
        assert self._ssh_key is not None
        if serial is None:
            serial = secrets.randbits(64)
        if not 0 <= serial < 2**64:
            raise BadParameter("certificate serial must fit in 64 bits")
        if not principals:
            # An empty list would make the certificate valid for every principal.
            raise BadParameter("an ssh certificate needs at least one principal")
        key_type, key_fields = _ssh_key_fields(key)
        cert_key_type = key_type + b"-cert-v01@openssh.com"
        names = [name for name, _ in extensions]
        if len(set(names)) != len(names):
            raise BadParameter("duplicate ssh certificate extension")
        encoded_extensions = b"".join(
            _sshstr(name) + _sshstr(_sshstr(value) if value else b"")
            for name, value in sorted(extensions)
        )
        body = b"".join(
            [
                _sshstr(cert_key_type),
                _sshstr(os.urandom(32)),  # nonce
                key_fields,
                struct.pack(">QI", serial, cert_type),
                _sshstr(key_id.encode()),
                _sshstr(b"".join(_sshstr(p.encode()) for p in principals)),
                struct.pack(">QQ", to_ssh_time(valid_after), to_ssh_time(valid_before)),
                _sshstr(b""),  # critical options
                _sshstr(encoded_extensions),
                _sshstr(b""),  # reserved
                _sshstr(self._ssh_ca_blob),
            ]
        )
        signature = self._ssh_key.sign(body)
        cert = body + _sshstr(_sshstr(b"ssh-ed25519") + _sshstr(signature))
        return (cert_key_type + b" " + base64.b64encode(cert)).decode()

    # ------------------------------------------------------------------------ X.509

    def sign_tls(
        self,
        public_key: CertificatePublicKeyTypes | str | bytes,
        identity: Identity,
        not_before: datetime,
        not_after: datetime,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        server: bool = False,
    ) -> str:
        """An X.509 certificate for `identity` (PEM): client auth, plus server auth if asked.

        CN = username, one O per role, and the identity as JSON in a private extension
        (its expiry set to `not_after`, so the two never disagree). `public_key` is a
        key object, a PEM public key or an OpenSSH public key line.
        """
        self._require("sign tls certificates", "user_tls", "host_tls")
        assert self._tls_key is not None
        start, end = _time_range(not_before, not_after)
        subject = self._subject(identity.username, identity.roles)
        # Identity.to_json() of the identity with expires = not_after, built directly.
        claims = identity.to_dict()
        claims["expires"] = end.isoformat()
        payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
        builder = (
            (self._server_base if server else self._client_base)
            .subject_name(subject)
            .public_key(_load_tls_subject_key(public_key))
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.UnrecognizedExtension(IDENTITY_EXTENSION_OID, payload), critical=False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        try:
            names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses)
        except ValueError as exc:
            raise BadParameter(f"invalid ip address in certificate request: {exc}") from exc
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        try:
            cert = builder.sign(self._tls_key, hashes.SHA256())
        except ValueError as exc:
            raise BadParameter(f"cannot issue certificate: {exc}") from exc
        return cert.public_bytes(serialization.Encoding.PEM).decode()


# ---------------------------------------------------------------------------- trust


def _public_keys(ca: CertAuthority, ca_type: CAType) -> list[str]:
    if ca.spec.type != ca_type:
        raise BadParameter(f"expected a {ca_type} certificate authority, got {ca.spec.type}")
    return [pair.public.strip() for pair in ca.spec.active_keys]


def user_ca_trust_line(ca: CertAuthority) -> str:
    """Lines for sshd's `TrustedUserCAKeys` file (one per active key of the user SSH CA)."""
    comment = f"certgate user CA {ca.spec.cluster_name}"
    return "\n".join(f"{key} {comment}" for key in _public_keys(ca, "user_ssh"))


def host_ca_known_hosts_line(ca: CertAuthority, hosts_pattern: str = "*") -> str:
    """`known_hosts` lines that make an OpenSSH client trust every node of the cluster."""
    if not hosts_pattern or any(c.isspace() for c in hosts_pattern):
        raise BadParameter("known_hosts host pattern must be non-empty and hold no spaces")
    return "\n".join(
        f"@cert-authority {hosts_pattern} {key} type=host" for key in _public_keys(ca, "host_ssh")
    )


def ca_pin(tls_ca: CertAuthority | x509.Certificate | str | bytes) -> str:
    """ "sha256:<hex>" over the CA certificate's SubjectPublicKeyInfo (DER).

    A joining host is given this pin with its token and checks the auth server's CA
    against it on first contact, before it trusts anything the server says.
    """
    if isinstance(tls_ca, CertAuthority):
        if tls_ca.spec.type not in ("user_tls", "host_tls"):
            raise BadParameter(f"a {tls_ca.spec.type} certificate authority has no pin")
        tls_ca = tls_ca.spec.active_keys[0].public
    cert = load_x509_certificate(tls_ca)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()
