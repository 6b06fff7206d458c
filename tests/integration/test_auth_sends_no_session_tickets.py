"""Auth sends no TLS session tickets: none of its clients resumes a session, and making
them was a sixth of auth's handshake CPU when 10,000 nodes reconnected at once. The
proxy's web listener still sends them (browsers and kubectl resume)."""

from __future__ import annotations

import socket

from tests.support.cluster import Cluster
from tests.support.raw_http import insecure


def _ticket_after_a_request(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with insecure().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                f"GET /v1/ping HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(65536):  # TLS 1.3 tickets come after the handshake
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
            assert tls.version() == "TLSv1.3"
            session = tls.session
            return session is not None and session.has_ticket


def test_auth_sends_no_session_ticket(cluster: Cluster) -> None:
    assert _ticket_after_a_request(cluster.proxy_addr)  # the check sees a ticket when sent
    assert not _ticket_after_a_request(cluster.auth_addr)
