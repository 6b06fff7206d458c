"""Auth's own proxy reaches it on a private loopback listener, so when the public auth
port is swamped (10,000 nodes coming back after a restart) auth still becomes ready:
its proxy does not wait its turn behind the nodes' handshakes.

Here a client keeps the public port at its connection cap from before auth starts;
auth must start and be ready all the same, while the public port visibly turns a new
connection away.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster

MAX_CONNECTIONS = 20
CONFIG = f"""\
version: v1
http_limits: {{max_connections: {MAX_CONNECTIONS}, handshake_timeout: 3s}}
"""


class Swamp:
    """Keeps opening connections to `port` that send nothing, so that every free place
    under its cap is taken as soon as it opens (as returning nodes take them)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        held: deque[socket.socket] = deque()
        while not self._stop.is_set():
            try:
                held.append(socket.create_connection(("127.0.0.1", self._port), timeout=1))
            except OSError:
                time.sleep(0.01)  # not listening yet
            while len(held) > 10 * MAX_CONNECTIONS:
                held.popleft().close()
            time.sleep(0.002)
        for sock in held:
            sock.close()

    def __enter__(self) -> Swamp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("swamped")
    config = workdir / "certgate.yaml"
    config.write_text(CONFIG)
    c = Cluster(workdir, extra_args=["--config", str(config)])
    yield c
    c.stop()


def turned_away(port: int) -> bool:
    """A new connection to `port` is closed by auth before anything is sent back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello
        sock.settimeout(2)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False  # admitted: it waits for the rest of the handshake


def test_auth_is_ready_while_its_public_port_is_full(cluster: Cluster) -> None:
    with Swamp(cluster.auth_port):
        cluster.start(timeout=30)  # ready: its proxy has its first snapshot from auth
        assert cluster.diag("/readyz")[0] == 200
        # The swamp holds the public port: a newcomer is turned away there (one of a
        # few tries, in case one lands just as a place frees: every 3 s each held place
        # times out, and a loaded machine's swamp thread refills them late).
        assert any(turned_away(cluster.auth_port) for _ in range(8))
