"""TLS contexts for every mTLS hop (service to auth, client to proxy, proxy to auth).

Python's ssl module loads certificate chains only from files, so key material passed
in memory goes through a private temporary directory that is removed at once.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

# TLS 1.2 suites a certgate server accepts: AEAD with forward secrecy only (Python's
# default list also has CBC ones). TLS 1.3's suites are all of that kind already.
SERVER_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def _load_chain(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    with tempfile.TemporaryDirectory(prefix="certgate-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key_pem)
        cert_path.write_text(cert_pem)
        context.load_cert_chain(str(cert_path), str(key_path))


def server_context(
    cert_pem: str,
    key_pem: str,
    client_cas: Sequence[str] = (),
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS server context; with `client_cas`, client certificates are asked for and
    verified against them (required or optional)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(SERVER_TLS12_CIPHERS)
    # The client's order decides among those (CPython makes it the server's): every one
    # is strong, and a client knows which is fastest where it runs. Go's TLS (kubectl)
    # puts AES-128-GCM first on CPUs with AES instructions, as a Go API server itself
    # would choose; OpenSSL's server order starts with the slower AES-256-GCM.
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, cert_pem, key_pem)
    if client_cas:
        context.load_verify_locations(cadata="\n".join(client_cas))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    trusted_cas: Sequence[str] = (),
    cert_pem: str | None = None,
    key_pem: str | None = None,
    insecure: bool = False,
) -> ssl.SSLContext:
    """A TLS client context trusting `trusted_cas` (or nothing checked with `insecure`),
    presenting a client certificate when one is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif trusted_cas:
        context.load_verify_locations(cadata="\n".join(trusted_cas))
    else:
        # No cluster CA known yet: a proxy with a publicly trusted certificate.
        context.load_default_certs()
    if cert_pem and key_pem:
        _load_chain(context, cert_pem, key_pem)
    return context


def peer_certificate_der(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)
