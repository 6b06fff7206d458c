"""The asyncssh server options every certgate SSH server shares (node and the proxy's
agentless forwarder): certificates only, raw bytes, keepalives."""

from __future__ import annotations

from typing import Any

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
