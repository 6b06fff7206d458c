"""Free loopback ports and waiting for listeners."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time

# Ports are handed out from a block of this process's own, below the kernel's ephemeral
# range (32768-60999), and never twice in a row: asking the kernel for port 0 and
# closing can give two listeners of one cluster the same port, and two pytest-xdist
# workers each other's.
_BLOCK = 5000
_FIRST = 12000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
_start = _FIRST + (int(_worker) if _worker.isdigit() else 0) % 4 * _BLOCK
_ports = itertools.cycle(range(_start, _start + _BLOCK))


def free_port() -> int:
    """A loopback port nobody listens on, not handed out recently by this process."""
    for _ in range(_BLOCK):
        port = next(_ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port left in this worker's block")


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 15
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.02)
    return False
