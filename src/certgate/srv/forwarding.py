"""Where a remote port forward (`ssh -R`) listens, the same on a node and at the proxy."""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"


def loopback_bind(listen_host: str) -> str:
    """Where `ssh -R listen_host:port` listens without ssh_remote_bind_any: a loopback
    address the client named stays; anything else (all interfaces, "", another
    address) becomes 127.0.0.1, as sshd does with GatewayPorts no."""
    host = listen_host.strip("[]").lower()
    if host == "localhost":
        return listen_host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return listen_host
    except ValueError:
        pass
    return LOOPBACK
