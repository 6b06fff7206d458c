"""A stopping auth ends its watch streams itself, cleanly, instead of waiting out each
stream's shutdown grace and then cutting it.

With 10,000 nodes (5,000 watch streams) auth took over 15 s to stop on SIGTERM and was
killed: every stream was a request in progress that the HTTP server waited for, then
cancelled. Ended by auth, a watcher sees the stream's end (and reconnects, to another
auth if there is one) rather than a broken connection.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from certgate.errors import ConnectionProblem
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import Cluster

STREAMS = 20


async def test_sigterm_ends_every_watch_stream_cleanly(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, roles="auth")
    cluster.start()
    try:
        identity = IdentityFiles.load(cluster.data_dir / "admin")
        client = AsyncAuthClient(f"https://{cluster.auth_addr}", identity.tls_context())
        snapshots = asyncio.Semaphore(0)

        async def watch() -> str:
            params = {"kinds": "role,lock", "ping": "5"}
            try:
                async with client.stream("GET", "/v1/watch", params, silence=60) as lines:
                    async for line in lines:
                        if '"snapshot"' in line:
                            snapshots.release()
            except ConnectionProblem as exc:
                return f"cut: {exc}"
            return "ended"

        watches = [asyncio.create_task(watch()) for _ in range(STREAMS)]
        for _ in range(STREAMS):
            await asyncio.wait_for(snapshots.acquire(), 30)
        assert cluster.process is not None
        cluster.process.send_signal(signal.SIGTERM)
        outcomes = await asyncio.wait_for(asyncio.gather(*watches), 30)
        assert outcomes == ["ended"] * STREAMS, outcomes
        await client.close()
        assert await asyncio.to_thread(cluster.process.wait, 15) == 0
    finally:
        cluster.stop()
