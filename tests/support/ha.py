"""A second auth process on a cluster's shared store (another host, in production)."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import BIN, Cluster
from tests.support.net import free_port
from tests.support.wait import eventually


@dataclass(frozen=True)
class OtherAuth:
    data_dir: Path  # only its own identities: `cgctl --data-dir DIR ...` acts through it
    addr: str  # its API, host:port


@contextmanager
def another_auth(cluster: Cluster, config: str, name: str = "auth-b") -> Iterator[OtherAuth]:
    """`certgate start --roles auth --config CONFIG` beside `cluster`, ready (users,
    roles, CAs and locks are the store's)."""
    data_dir = cluster.workdir / name
    addr = f"127.0.0.1:{free_port()}"
    diag_port = free_port()
    log = cluster.workdir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / "certgate"), "start", "--config", config, "--roles", "auth",
             "--data-dir", str(data_dir), "--cluster-name", cluster.cluster_name,
             "--nodename", name, "--auth-listen", addr,
             "--diag-addr", f"127.0.0.1:{diag_port}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{diag_port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        eventually(ready, timeout=30)
        yield OtherAuth(data_dir, addr)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
