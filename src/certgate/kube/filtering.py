"""Answers the kube service rewrites: lists and watches filtered by kubernetes_resources.

A list (or a single object) is read whole, filtered (access/kube.py ResourceRules) and
sent with its new length; a watch is filtered event by event as it streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from certgate.access.kube import KubeRequest, ResourceRules, status_body
from certgate.srv.http1 import (
    Framing,
    Head,
    encode_chunk,
    read_body,
    read_chunks,
    response_head,
)

# Lists are read whole only when kubernetes_resources filter them.
MAX_FILTERED_BODY = 64 * 1024 * 1024


async def relay_filtered(
    response: Head,
    up_reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: Framing,
    request: KubeRequest,
    rules: ResourceRules,
) -> None:
    body = await read_body(up_reader, framing, MAX_FILTERED_BODY)
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None  # not JSON (the request asks for JSON): nothing to judge, nothing sent
    kept = rules.filter_object(request, obj)
    if kept is None:
        await answer(
            writer,
            403,
            "Forbidden",
            f"access denied: {request.target()} is not allowed by your roles "
            "(kubernetes_resources)",
        )
        return
    body = json.dumps(kept).encode()
    response.remove("Transfer-Encoding")
    response.set("Content-Length", str(len(body)))
    writer.write(response.encode() + body)
    await writer.drain()


async def relay_watch(
    response: Head,
    up_reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: Framing,
    request: KubeRequest,
    rules: ResourceRules,
) -> None:
    if framing.kind not in ("chunked", "close"):
        # Not a stream (a Status, say): read whole and judged as a list is.
        await relay_filtered(response, up_reader, writer, framing, request, rules)
        return
    response.remove("Content-Length")
    response.set("Transfer-Encoding", "chunked")
    writer.write(response.encode())
    pending = b""
    while piece := await read_chunks(up_reader, framing):
        pending += piece
        *lines, pending = pending.split(b"\n")
        out = b"".join(
            kept for line in lines if line.strip() and (kept := rules.filter_event(request, line))
        )
        if out:
            writer.write(encode_chunk(out))
            await writer.drain()
    writer.write(encode_chunk(b""))
    await writer.drain()


def json_only(accept: str) -> str:
    """An Accept header with its JSON media ranges only (`application/json`, with
    kubectl's `;as=Table;...` parameters kept); plain JSON when none is left."""
    kept = [
        part.strip()
        for part in accept.split(",")
        if part.split(";", 1)[0].strip().lower() == "application/json"
    ]
    return ", ".join(kept) or "application/json"


# ---- upgrades: exec/attach sessions, port-forward ------------------------------------


async def answer(writer: asyncio.StreamWriter, status: int, reason: str, message: str) -> None:
    """A Kubernetes Status answer, as kubectl prints it."""
    body = status_body(status, reason, message)
    head = response_head(
        status,
        reason,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    writer.write(head.encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
