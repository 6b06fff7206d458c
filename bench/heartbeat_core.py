"""Auth's heartbeat path in one process, without HTTP or TLS: N joined nodes beat at once.

    .venv/bin/python bench/heartbeat_core.py [--nodes 1000] [--backends sqlite,postgres]
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python bench/heartbeat_core.py

What auth itself spends per heartbeat (the name check and the store write), apart from
the connections `bench/scale.py` also measures: wall time for N beats made at once, and
the process's CPU per beat (the SQLite thread included), best of three rounds. Run it
twice, once with PYTHONPATH pointing at another checkout's `src`, to compare two
versions on the same machine in the same minute. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import certgate
from certgate.auth.server import AuthServer
from certgate.backend.registry import open_backend, open_event_store
from certgate.clock import SystemClock
from certgate.services.audit import AuditLog
from tests.support.postgres import running_postgres
from tests.unit.test_heartbeat_names import TTL, beat, join


async def measure(nodes: int, storage: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="certgate-beats-"))
    backend = await open_backend(storage, tmp)
    events = await open_event_store(storage, tmp)
    audit = AuditLog(events, tmp / "log" / "events.log")
    auth = AuthServer(backend, audit, SystemClock(), "test", "proxy:3080", "auth:3025")
    await auth.start()
    try:
        identities = [await join(auth, f"n{i}") for i in range(nodes)]
        rounds = []
        for _ in range(3):
            cpu, wall = time.process_time(), time.monotonic()
            await asyncio.gather(*(auth.heartbeat(i, beat(i.username), TTL) for i in identities))
            rounds.append((time.monotonic() - wall, time.process_time() - cpu))
        wall_s, cpu_s = min(rounds)
        where = Path(certgate.__file__).parents[2]
        print(
            f"{where} {storage.get('type', 'sqlite')}: {nodes} beats at once in {wall_s:.2f} s, "
            f"auth CPU {cpu_s * 1000 / nodes:.2f} ms per beat"
        )
    finally:
        await auth.close()
        await audit.close()
        await events.close()
        await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        if backend == "postgres":
            with running_postgres() as server:
                asyncio.run(measure(args.nodes, server.storage(server.create_schema())))
        else:
            asyncio.run(measure(args.nodes, {}))


if __name__ == "__main__":
    main()
