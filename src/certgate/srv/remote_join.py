"""Observing a session that runs in another process: the wire between the proxy and a
kube service, which runs `kubectl exec` sessions and has no SSH server of its own.

    cgsh join ID ──ssh, login join:observer:ID──▶ proxy SSH (3023)
        proxy ──mTLS (proxy host cert)──▶ kube service (3027)
              GET /certgate/observe HTTP/1.1
              X-Certgate-Observe-Session: ID
              X-Certgate-Identity: the joiner, as on kube calls
              X-Certgate-Client-Addr: where the joiner connected from
        ◀── 200, then what the session shows, as raw bytes, until the kube service closes
            (the view ended; its last line says why) or the proxy does (the joiner left)
        ◀── 403 / 404 with a Kubernetes Status whose message is the one-line reason

The route is a header, not a path: the proxy's kube listener drops every X-Certgate-*
header a client sends, so no kubectl call can ever be taken for an observer.
"""

from __future__ import annotations

import asyncio
import json
import ssl

from certgate.api.identity import Identity
from certgate.errors import AccessDenied, BadParameter, CertgateError, NotFound, what_broke
from certgate.srv.http1 import (
    MAX_HEAD,
    Head,
    ProtocolError,
    body_framing,
    read_body,
    read_head,
)
from certgate.srv.http1_server import Connection

OBSERVE_SESSION_HEADER = "X-Certgate-Observe-Session"
OBSERVE_PATH = "/certgate/observe"
IDENTITY_HEADER = "X-Certgate-Identity"
CLIENT_ADDR_HEADER = "X-Certgate-Client-Addr"
CONNECT_TIMEOUT = 10.0
# A refusal's Status body is a few hundred bytes.
MAX_REFUSAL_BODY = 64 * 1024


def is_observe_request(head: Head) -> bool:
    return head.get(OBSERVE_SESSION_HEADER) is not None


def identity_from_header(head: Head) -> Identity:
    """The user a proxy vouches for (the kube service takes calls from proxies only)."""
    text = head.get(IDENTITY_HEADER)
    if not text:
        raise AccessDenied("access denied: the proxy named no user")
    try:
        return Identity.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise AccessDenied("access denied: the proxy sent a malformed identity") from exc


def observe_request(identity: Identity, session_id: str, client_addr: str) -> Head:
    return Head(
        f"GET {OBSERVE_PATH} HTTP/1.1",
        [
            ("Host", "certgate"),
            (OBSERVE_SESSION_HEADER, session_id),
            (IDENTITY_HEADER, identity.to_json()),
            (CLIENT_ADDR_HEADER, client_addr),
            ("Connection", "close"),
        ],
    )


async def open_observer(
    addr: str, tls: ssl.SSLContext, identity: Identity, session_id: str, client_addr: str
) -> Connection:
    """A stream of what session `session_id` shows, from the service at `addr`;
    AccessDenied or NotFound with the service's reason, BadParameter if unreachable."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host, int(port), ssl=tls, server_hostname=host, limit=MAX_HEAD
            )
    except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
        raise BadParameter(f"cannot reach the kube service at {addr}: {what_broke(exc)}") from exc
    try:
        writer.write(observe_request(identity, session_id, client_addr).encode())
        async with asyncio.timeout(CONNECT_TIMEOUT):
            response = await read_head(reader)
        if response is None:
            raise ProtocolError("the kube service closed the connection")
        if response.status != 200:
            framing = body_framing(response, response=True)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                body = await read_body(reader, framing, MAX_REFUSAL_BODY)
            raise _refusal(response.status, body)
    except BaseException as exc:
        writer.close()
        if isinstance(exc, OSError | TimeoutError | asyncio.IncompleteReadError):
            raise BadParameter(f"the kube service at {addr} failed: {exc}") from exc
        raise
    return reader, writer


def _refusal(status: int, body: bytes) -> CertgateError:
    try:
        message = str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        message = f"the kube service answered {status}"
    if status == 403:
        return AccessDenied(message)
    if status == 404:
        return NotFound(message)
    return BadParameter(message)
