"""A proxy too busy to finish a TLS handshake in time is reported as busy, not as
refusing the user's certificate.

At 10,000 nodes, `cgsh ls` failed with "the proxy refused your certificate ... run cgsh
login": its connection waited behind thousands of others for a handshake slot and timed
out, and the check that tells a refusal (ask the same proxy again without a
certificate) was answered a moment later. Logging in again would not have helped.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, User
from tests.support.net import free_port


class Relay:
    """A TCP relay to the proxy that leaves its first `stall` connections unanswered
    (as a listener whose handshake slots are all taken does) and pipes the rest."""

    def __init__(self, target: str, stall: int) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._stall = stall
        self._held: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            if len(self._held) < self._stall:
                self._held.append(conn)  # its ClientHello is never read
                continue
            upstream = socket.create_connection(self._target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def relays(cluster: Cluster) -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()


def _through(user: User, relay: Relay) -> None:
    """Point the user's profile at the relay (the proxy's pin is unchanged)."""
    path = user.home / "profile.json"
    profile = json.loads(path.read_text())
    profile["proxy"] = relay.addr
    path.write_text(json.dumps(profile))


def test_a_handshake_that_times_out_is_busy_not_refused(
    cluster: Cluster, relays: list[Relay]
) -> None:
    user = cluster.add_user("busy-bo", roles="access")
    cluster.login(user)

    # The control: through a relay that passes everything, the same command works, so
    # the relay and the edited profile are sound.
    relays.append(Relay(cluster.proxy_addr, stall=0))
    _through(user, relays[-1])
    assert cluster.cgsh(user, "ls", check=False).returncode == 0

    # The first connection waits for a handshake that never comes; the next is served.
    relays.append(Relay(cluster.proxy_addr, stall=1))
    _through(user, relays[-1])
    result = cluster.cgsh(user, "ls", check=False)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith(f"error: https://{relays[-1].addr} did not answer in time"), message
    assert "try again" in message
    assert "refused your certificate" not in message and "login" not in message, message
