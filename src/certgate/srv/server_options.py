"""The asyncssh server options every certgate SSH server shares (node and the proxy's
agentless forwarder): certificates only, raw bytes, keepalives."""

from __future__ import annotations

from typing import Any

# OpenSSH clients take the first cipher of *their* list that the server offers:
# chacha20-poly1305, then aes-ctr (with a separate MAC), then aes-gcm. In asyncssh
# AES-GCM runs at about twice the speed of the others (NOTES.md), so the node offers
# only AES-GCM, which every OpenSSH since 6.2 (2013), PuTTY and Go's x/crypto speak.
DEFAULT_CIPHERS: tuple[str, ...] = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

LOGIN_TIMEOUT = 30.0


def certificate_server_options(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "public_key_auth": True,
        "password_auth": False,
        "kbdint_auth": False,
        "host_based_auth": False,
        "gss_host": None,
        # Raw bytes end to end, and no asyncssh line editor in front of the pty.
        "encoding": None,
        "line_editor": False,
        "allow_pty": True,
        "x11_forwarding": False,
        "login_timeout": LOGIN_TIMEOUT,
        "keepalive_interval": 30,
        "keepalive_count_max": 3,
        "server_version": "certgate",
    }
    options.update(overrides)
    return options
