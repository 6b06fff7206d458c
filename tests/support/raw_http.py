"""HTTPS requests with bytes the certgate clients would never send (attackers' input)."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx

from certgate.rpc.identity_files import IdentityFiles


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def admin_context(data_dir: Path) -> ssl.SSLContext:
    """The auth host's admin identity (what cgctl uses there)."""
    return IdentityFiles.load(data_dir / "admin").tls_context()


def send(
    addr: str,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """One request; the status and the answer (decoded JSON when it is JSON)."""
    headers = {"Content-Type": content_type} if body is not None else {}
    with httpx.Client(verify=context or insecure(), timeout=30) as client:
        response = client.request(method, f"https://{addr}{path}", content=body, headers=headers)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def send_json(addr: str, path: str, value: Any, context: ssl.SSLContext | None = None) -> Any:
    return send(addr, "POST", path, json.dumps(value).encode(), context=context)


def dir_size(path: Path) -> int:
    """Bytes under `path` (the store, its WAL, the audit log: everything)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except FileNotFoundError:
                pass  # a WAL checkpoint removed it meanwhile
    return total
