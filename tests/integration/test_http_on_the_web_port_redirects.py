"""Plain http:// on the proxy's web port is redirected to https://, and the metrics
count a refused login as the 4xx it is."""

from __future__ import annotations

import re
import socket

from tests.support.cluster import Cluster, User


def plain_request(addr: str, head: bytes) -> bytes:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head)
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    return answer


def test_plain_http_is_redirected_to_https(cluster: Cluster) -> None:
    head = f"GET /web/invite/abc?x=1 HTTP/1.1\r\nHost: {cluster.proxy_addr}\r\n\r\n".encode()
    answer = plain_request(cluster.proxy_addr, head).decode()
    assert answer.startswith("HTTP/1.1 301 ")
    assert f"Location: https://{cluster.proxy_addr}/web/invite/abc?x=1\r\n" in answer
    # HTTPS on the same port still works.
    assert cluster.web("GET", "/v1/ping")[0] == 200


def test_a_forged_host_cannot_split_the_answer(cluster: Cluster) -> None:
    head = b"GET / HTTP/1.1\r\nHost: evil.test\rSet-Cookie: x=1\r\n\r\n"
    answer = plain_request(cluster.proxy_addr, head).decode()
    assert answer.startswith("HTTP/1.1 400 ")
    assert "Set-Cookie" not in answer


def test_refused_logins_count_as_4xx_not_500(cluster: Cluster) -> None:
    user = cluster.add_user("metrics-refused")
    wrong = User(user.name, "not-the-password-at-all", user.otp, user.home)
    assert cluster.login(wrong, check=False, otp="123456").returncode == 3
    metrics = cluster.diag("/metrics")[1]
    refused = re.search(
        r'^certgate_http_requests_total\{service="proxy",status="403"\} ([0-9.]+)', metrics, re.M
    )
    assert refused and float(refused.group(1)) >= 1, metrics
    assert 'service="proxy",status="500"' not in metrics
