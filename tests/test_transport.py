"""transport.py: what certgate's TLS servers let a client negotiate."""

from __future__ import annotations

import asyncio
from pathlib import Path

from certgate.transport import server_context
from tests.support.tlsfiles import self_signed


async def _negotiate(tmp_path: Path, *client_args: str) -> tuple[str | None, str]:
    """(the suite a certgate server saw, openssl s_client's output) for one handshake
    of the real OpenSSL client with `client_args`."""
    cert_file, key_file = self_signed(tmp_path)
    context = server_context(cert_file.read_text(), key_file.read_text())
    seen: list[str] = []

    async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cipher = writer.get_extra_info("cipher")
        seen.append(cipher[0])
        writer.close()

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", *client_args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(client.communicate(), 30)
    finally:
        server.close()
        await server.wait_closed()
    return (seen[0] if seen else None), out.decode(errors="replace")


async def test_the_clients_order_of_tls13_suites_wins(tmp_path: Path) -> None:
    """Go's TLS (kubectl) lists AES-128-GCM first on CPUs with AES instructions; the
    server then takes it rather than its own first choice (AES-256-GCM)."""
    for order in (
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
    ):
        chosen, out = await _negotiate(tmp_path, "-tls1_3", "-ciphersuites", order)
        assert chosen == order.split(":")[0], out


async def test_a_tls12_client_gets_aead_suites_only(tmp_path: Path) -> None:
    offered = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    chosen, out = await _negotiate(tmp_path, "-tls1_2", "-cipher", offered)
    assert chosen == "ECDHE-ECDSA-AES128-GCM-SHA256", out
    # CBC suites (in Python's default list) are refused: the client's choice is always
    # among strong ones.
    chosen, out = await _negotiate(tmp_path, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256")
    assert chosen is None, out
