"""Audit search latency on the PostgreSQL event store at a million events.

    .venv/bin/python bench/audit_search_postgres.py [--events 1000000] [--repeat 20]

Starts a throwaway PostgreSQL (tests/support/postgres.py), loads `--events` synthetic
events through `PostgresEventStore.append_many` (the same mix and queries as
recording_overhead.py uses for SQLite), then times each query through the store:
median and 95th percentile of `--repeat` runs after a warm-up. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench", ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from recording_overhead import percentile, queries, synthetic_events  # noqa: E402

from certgate.backend.events_postgres import PostgresEventStore  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402


async def measure(conninfo: str, count: int, repeat: int) -> None:
    store = await PostgresEventStore.open(conninfo)
    try:
        events = synthetic_events(count, datetime.now(UTC) - timedelta(minutes=1))
        start = time.perf_counter()
        for offset in range(0, count, 10_000):
            await store.append_many(events[offset : offset + 10_000])
        loaded = time.perf_counter() - start
        print(f"loaded {count:,} events in {loaded:.1f} s ({count / loaded:,.0f}/s)")
        print(f"{'query':40} {'median':>9} {'p95':>9}  rows")
        for name, params in queries(datetime.now(UTC)):
            kwargs: dict[str, Any] = {
                "since": datetime.fromisoformat(params["since"]) if "since" in params else None,
                "event_types": params["event"].split(",") if "event" in params else (),
                "user": params.get("user"),
                "node": params.get("node"),
                "limit": int(params["limit"]),
            }
            page, _ = await store.search(**kwargs)  # warm
            times = []
            for _ in range(repeat):
                begin = time.perf_counter()
                await store.search(**kwargs)
                times.append(time.perf_counter() - begin)
            print(
                f"{name:40} {statistics.median(times) * 1000:7.2f}ms"
                f" {percentile(times, 0.95) * 1000:7.2f}ms  {len(page)}"
            )
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with running_postgres() as server:
        server.sql("public", "SELECT 1")
        asyncio.run(measure(server.conninfo("public"), args.events, args.repeat))


if __name__ == "__main__":
    main()
