"""Shims over asyncssh internals certgate's SSH servers cannot do without (the first two)
or are better off without (the other two).

1. Certificate capture. asyncssh checks a client certificate (CA signature, validity,
   principal = login, source-address) but never hands it to the application
   (ronf/asyncssh#642), and the node needs the roles inside it. We wrap, per
   connection, `SSHServerConnection.validate_public_key(username, key_data, msg,
   signature)`: asyncssh calls it for every public-key request, and when it returns
   True for a request that carries a signature, `key_data` is exactly the
   certificate that was validated *and* whose private key signed. That is the one
   moment where "which certificate authenticated" is unambiguous, so the node's
   authorization runs there and can still turn the answer into a failure.

2. Agent forwarding guard. asyncssh decides agent forwarding with a server-wide
   option, and creates the agent socket in a root-only temporary directory. The node
   decides per connection (the caller's roles) and must hand the socket to the target
   user, so we wrap `SSHServerConnection.create_agent_listener()`.

3. No config reload. At the start of user authentication asyncssh re-reads its server
   config for the connection (`SSHServerConnection.reload_config()`: sshd_config Match
   blocks on the user and address), building a whole new options object in a thread.
   certgate's servers pass no config file, so the reload builds the same options again:
   ~0.4 ms of CPU and a round trip through the executor's thread per connection, on each
   hop of a session start. `skip_config_reload` makes it a no-op on one connection, and
   only when no config file was loaded and no reverse DNS lookup is asked for.

4. No filler packets. asyncssh puts an empty SSH_MSG_IGNORE before every packet it sends
   once encryption is on: a countermeasure for CBC ciphers (the next packet's IV must not
   be predictable), which certgate never negotiates. With an AEAD cipher (AES-GCM,
   chacha20-poly1305: a fresh nonce per packet) the filler protects nothing and doubles
   the packets sent (each built, padded from os.urandom, encrypted, written). OpenSSH
   sends none. `skip_ignore_packets` drops exactly that filler on one connection while
   an AEAD cipher is in use; any other cipher keeps it.

5. No second parse of a certificate it already trusted. asyncssh parses the client's
   certificate (and checks the CA's signature over it) for every public-key request,
   and clients ask twice per connection: a probe, then the signed request. A user's
   certificate comes with every connection it opens, so one session start parsed the
   same bytes four times (~0.13 ms each). `reuse_trusted_certificates` keeps the parsed
   form of certificates that passed asyncssh's checks on an earlier request, keyed by
   their exact bytes (the parse and the signature are a function of those bytes alone);
   whether the CA is trusted, validity, principals and source address are still
   decided afresh on every request, by asyncssh's own code.

All are instance attributes set on one connection, never patches of the class, so
other asyncssh servers in the same process (the proxy) are unaffected. They depend on
asyncssh internals: `ASYNCSSH_PINNED` names the version they were checked against,
`check_compatible()` refuses to run when the hooks' shape changed, and
tests/node/test_certcapture.py fails loudly on any upgrade.
"""

from __future__ import annotations

import base64
import functools
import inspect
import logging
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.public_key import KeyImportError, SSHOpenSSHCertificate, decode_ssh_certificate

from certgate.api.certs import identity_from_ssh_cert
from certgate.api.identity import Identity

log = logging.getLogger(__name__)

# The asyncssh release these shims were read against. Upgrading asyncssh means reading
# connection.py/auth.py again (see the module docstring) and then bumping this.
ASYNCSSH_PINNED = "2.24.1"

# Called with (login, certificate wire bytes) once asyncssh validated the certificate
# and its signature; returning False makes the authentication attempt fail.
CertificateVerified = Callable[[str, bytes], Awaitable[bool]]

# Certificates decoded lately. A user's certificate comes with every connection it opens
# (two per session: the proxy and the node), and decoding it (cryptography's parser, the
# JSON extensions) cost ~0.2 ms each time. Only the decoding is kept: asyncssh checked the
# certificate's signature, validity and source address on this connection before the
# capture sees it, and roles and locks are decided afresh from the live view every time.
IDENTITY_CACHE = 1024

_VALIDATE_PARAMS = ["self", "username", "key_data", "msg", "signature"]
_CLIENT_CERT_PARAMS = ["self", "username", "key_data"]
_OPENSSH_CERT_PARAMS = ["self", "username", "cert"]
_SEND_PARAMS = ["self", "pkttype", "args", "handler"]
# The filler asyncssh sends: SSH_MSG_IGNORE with an empty string.
_FILLER = (b"\x00\x00\x00\x00",)
_AEAD = (GCMEncryption, ChachaEncryption)


class ShimError(RuntimeError):
    """The installed asyncssh no longer has the internals these shims wrap."""


def check_compatible() -> None:
    """Raise ShimError unless asyncssh still has the hooks with the expected shape."""
    conn_cls = asyncssh.SSHServerConnection
    validate = getattr(conn_cls, "validate_public_key", None)
    if validate is None or not inspect.iscoroutinefunction(validate):
        raise ShimError(_broken("SSHServerConnection.validate_public_key is gone or not async"))
    params = list(inspect.signature(validate).parameters)
    if params != _VALIDATE_PARAMS:
        raise ShimError(_broken(f"validate_public_key takes {params}, expected {_VALIDATE_PARAMS}"))
    agent = getattr(conn_cls, "create_agent_listener", None)
    if agent is None or not inspect.iscoroutinefunction(agent):
        raise ShimError(_broken("SSHServerConnection.create_agent_listener is gone or not async"))
    if list(inspect.signature(agent).parameters) != ["self"]:
        raise ShimError(_broken("create_agent_listener now takes arguments"))
    reload = getattr(conn_cls, "reload_config", None)
    if reload is None or not inspect.iscoroutinefunction(reload):
        raise ShimError(_broken("SSHServerConnection.reload_config is gone or not async"))
    if list(inspect.signature(reload).parameters) != ["self"]:
        raise ShimError(_broken("reload_config now takes arguments"))
    send = getattr(conn_cls, "send_packet", None)
    if send is None or list(inspect.signature(send).parameters) != _SEND_PARAMS:
        raise ShimError(_broken("SSHServerConnection.send_packet changed its parameters"))
    for name, expected in (
        ("_validate_client_certificate", _CLIENT_CERT_PARAMS),
        ("_validate_openssh_certificate", _OPENSSH_CERT_PARAMS),
    ):
        method = getattr(conn_cls, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            raise ShimError(_broken(f"SSHServerConnection.{name} is gone or not async"))
        if list(inspect.signature(method).parameters) != expected:
            raise ShimError(_broken(f"SSHServerConnection.{name} changed its parameters"))
    if asyncssh.__version__ != ASYNCSSH_PINNED:
        log.warning(
            "asyncssh %s is not the version the certificate capture was checked against (%s)",
            asyncssh.__version__,
            ASYNCSSH_PINNED,
        )


def _broken(what: str) -> str:
    return (
        f"asyncssh {asyncssh.__version__} broke certgate's certificate capture: {what}; "
        f"it was written for asyncssh {ASYNCSSH_PINNED} (see certgate/srv/certcapture.py)"
    )


def install_certificate_capture(conn: Any, on_verified: CertificateVerified) -> None:
    """Route `conn`'s successful, signed public-key checks through `on_verified`."""
    original = conn.validate_public_key

    async def validate_public_key(
        username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        if not await original(username, key_data, msg, signature):
            return False
        if not msg:
            # A probe ("would you accept this key?") proves nothing yet; decide when
            # the client signs, so authorization and audit run once per real attempt.
            return True
        return await on_verified(username, key_data)

    conn.validate_public_key = validate_public_key


def guard_agent_forwarding(
    conn: Any, allow: Callable[[], bool], created: Callable[[str], None]
) -> None:
    """Let `allow()` veto agent forwarding on `conn`; `created(path)` sees the socket."""
    original = conn.create_agent_listener

    async def create_agent_listener() -> bool:
        if not allow():
            return False
        if not await original():
            return False
        path = conn.get_agent_path()
        if path:
            created(str(path))
        return True

    conn.create_agent_listener = create_agent_listener


def skip_config_reload(conn: Any) -> bool:
    """Make `conn`'s per-connection config reload a no-op when it would change nothing:
    no config file loaded, no reverse DNS. Returns whether it was skipped."""
    options = getattr(conn, "_options", None)
    config = getattr(options, "config", None)
    if config is None or getattr(config, "loaded", True) or getattr(conn, "_rdns_lookup", True):
        return False  # Match blocks or a host name to look up: asyncssh's reload matters

    async def reload_config() -> None:
        """Nothing to re-evaluate: the options this connection has are the reload's."""

    conn.reload_config = reload_config
    return True


@functools.lru_cache(maxsize=IDENTITY_CACHE)
def certificate_identity(key_data: bytes) -> Identity:
    """The identity of a certificate in its wire form (BadParameter, ValueError if it is
    malformed; those are not kept)."""
    return identity_from_ssh_cert(certificate_text(key_data))


class _TrustedCertificates:
    """Parsed certificates that passed asyncssh's checks, by their wire bytes; the least
    recently used go first. Only trusted ones are kept, so a stranger's certificates
    (anyone can sign one with a CA of their own) never take the room."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._kept: OrderedDict[bytes, SSHOpenSSHCertificate] = OrderedDict()

    def get(self, key_data: bytes) -> SSHOpenSSHCertificate | None:
        cert = self._kept.get(key_data)
        if cert is not None:
            self._kept.move_to_end(key_data)
        return cert

    def keep(self, key_data: bytes, cert: SSHOpenSSHCertificate) -> None:
        self._kept[key_data] = cert
        self._kept.move_to_end(key_data)
        if len(self._kept) > self._size:
            self._kept.popitem(last=False)

    def clear(self) -> None:
        self._kept.clear()


TRUSTED_CERTIFICATES = _TrustedCertificates(IDENTITY_CACHE)


def reuse_trusted_certificates(conn: Any) -> None:
    """Parse a certificate `conn`'s client sends once, not on every request (see the
    module docstring); every check but the parse and the CA's signature still runs."""
    original = conn._validate_client_certificate

    async def _validate_client_certificate(username: str, key_data: bytes) -> Any:
        kept = TRUSTED_CERTIFICATES.get(key_data)
        if kept is not None:
            return await conn._validate_openssh_certificate(username, kept)
        try:
            cert = decode_ssh_certificate(key_data)
        except KeyImportError:
            return None
        if not isinstance(cert, SSHOpenSSHCertificate):
            return await original(username, key_data)  # X.509: asyncssh's own way
        key = await conn._validate_openssh_certificate(username, cert)
        if key is not None:
            TRUSTED_CERTIFICATES.keep(key_data, cert)
        return key

    conn._validate_client_certificate = _validate_client_certificate


def skip_ignore_packets(conn: Any) -> None:
    """Send no filler SSH_MSG_IGNORE before each packet while `conn` encrypts with an
    AEAD cipher (see the module docstring)."""
    original = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == _FILLER and isinstance(conn._send_encryption, _AEAD):
            return
        original(pkttype, *args, handler=handler)

    conn.send_packet = send_packet


def certificate_text(key_data: bytes) -> str:
    """ "type base64" of a key or certificate in its wire form (as sent in userauth)."""
    if len(key_data) < 4:
        raise ValueError("truncated ssh key blob")
    (length,) = struct.unpack(">I", key_data[:4])
    key_type = key_data[4 : 4 + length].decode("ascii")
    return f"{key_type} {base64.b64encode(key_data).decode('ascii')}"
