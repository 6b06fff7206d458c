"""The access matrix at 1,000 nodes x 100 users: the whole matrix against one page.

    .venv/bin/python bench/access_matrix.py [--nodes 1000] [--users 100] [--page 200]
                                            [--runs 10] [--no-server]

1. In process (access/matrix.py, no I/O): the whole matrix (the baseline: what
   `GET /v1/access` computed for every call before paging), then a page of `--page`
   rows at the start, the middle and the end (`iter_access(data, after=key)`).
   `RoleSet.check_login` on successes, now and with the refusal text built up front as
   before (the old cost, emulated in the same run).
2. Against a real `certgate start --roles auth,proxy` on loopback (SQLite), loaded with
   `cgctl create` (roles, users, nodes and 10 Kubernetes clusters in one file):
   `GET /v1/access` through the typed client, whole and a page at a time, p50 of `--runs`.

Prints ratios against the whole matrix measured in the same run and absolute figures;
asserts nothing. The machine may be shared: say so next to any figure you quote.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certgate.access.matrix import MatrixInput, encode_key, iter_access
from certgate.access.rbac import RoleSet, _bare
from certgate.api.codec import from_dict
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock
from certgate.api.node import Node
from certgate.api.role import Role
from certgate.api.user import User
from certgate.errors import CertgateError

BIN = Path(sys.executable).parent
ENVS = ("dev", "staging", "prod")
TEAMS = tuple(f"team-{i}" for i in range(10))


def documents(nodes: int, users: int) -> list[dict[str, Any]]:
    """Roles, users, nodes and clusters as `cgctl create` takes them."""
    roles = [
        {"kind": "role", "version": "v1", "metadata": {"name": "bm-dev"},
         "spec": {"allow": {"logins": ["{{internal.logins}}", "ubuntu", "root"],
                            "node_labels": {"env": ["dev", "staging"]},
                            "kubernetes_labels": {"env": "dev"},
                            "kubernetes_groups": ["viewers"]},
                  "deny": {"logins": ["root"]}}},
        {"kind": "role", "version": "v1", "metadata": {"name": "bm-prod"},
         "spec": {"allow": {"logins": ["ubuntu", "postgres"], "node_labels": {"env": "prod"}},
                  "deny": {"node_labels": {"team": "team-0"}}}},
    ]  # fmt: skip
    roles += [
        {"kind": "role", "version": "v1", "metadata": {"name": f"bm-{team}"},
         "spec": {"allow": {"logins": ["deploy"], "node_labels": {"team": team},
                            "kubernetes_labels": {"team": team},
                            "kubernetes_groups": ["editors"]}}}
        for team in TEAMS
    ]  # fmt: skip
    people = [
        {"kind": "user", "version": "v1", "metadata": {"name": f"bm-user-{i:03}"},
         "spec": {"roles": ["bm-dev", f"bm-{TEAMS[i % len(TEAMS)]}"]
                           + (["bm-prod"] if i % 5 == 0 else []),
                  "traits": {"logins": [f"u{i:03}"]}}}
        for i in range(users)
    ]  # fmt: skip
    fleet = [
        {"kind": "node", "version": "v1",
         "metadata": {"name": f"bm-node-{i:04}",
                      "labels": {"env": ENVS[i % 3], "team": TEAMS[i % len(TEAMS)]}},
         "spec": {"addr": f"10.0.{i // 250}.{i % 250}:3022", "hostname": f"host-{i:04}"}}
        for i in range(nodes)
    ]  # fmt: skip
    clusters = [
        {"kind": "kube_cluster", "version": "v1",
         "metadata": {"name": f"bm-kube-{i}",
                      "labels": {"env": ENVS[i % 3], "team": TEAMS[i % len(TEAMS)]}},
         "spec": {"addr": "127.0.0.1:3027"}}
        for i in range(10)
    ]  # fmt: skip
    return [*roles, *people, *fleet, *clusters]


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median seconds of `runs` calls, and the last result."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def in_process(docs: list[dict[str, Any]], page: int, runs: int) -> None:
    items = [from_dict(d) for d in docs]
    roles = {r.name: r for r in items if isinstance(r, Role)}
    users = [u for u in items if isinstance(u, User)]
    nodes = [n for n in items if isinstance(n, Node)]
    clusters = [c for c in items if isinstance(c, KubeCluster)]
    locks = [from_dict({"kind": "lock", "version": "v1", "metadata": {"name": "bm-lock"},
                        "spec": {"target": {"user": users[1].name}}})]  # fmt: skip
    assert all(isinstance(lock, Lock) for lock in locks)
    data = MatrixInput(users, roles, nodes, locks, now=datetime.now(UTC), kube_clusters=clusters)
    whole_s, rows = timed(lambda: list(iter_access(data)), max(1, runs // 5))
    print(f"in process: {len(users)} users x {len(nodes)} nodes + {len(clusters)} clusters: "
          f"{len(rows)} rows")  # fmt: skip
    print(f"  whole matrix            {whole_s * 1000:8.1f} ms   1.00x (baseline)")
    for where, index in (("first", 0), ("middle", len(rows) // 2), ("last", len(rows) - page)):
        after = rows[index - 1].key if index > 0 else None
        page_s, got = timed(
            lambda a=after: list(itertools.islice(iter_access(data, a), page)), runs
        )  # type: ignore[misc]
        assert got and got[0].key == rows[index].key
        print(f"  {where:6} page of {page:<5}  {page_s * 1000:8.1f} ms   "
              f"{page_s / whole_s:.3f}x")  # fmt: skip
    role_set = RoleSet([roles["bm-dev"]], users[2].spec.traits)
    labels = dict(nodes[0].metadata.labels)

    def lazy() -> None:
        for node in nodes:
            role_set.check_login(node.name, labels, "ubuntu")

    def eager() -> None:
        for node in nodes:
            _ = f"{_bare('ubuntu')}@{_bare(node.name)}"  # what check_login built before
            role_set.check_login(node.name, labels, "ubuntu")

    eager_s, _ = timed(eager, runs * 10)
    lazy_s, _ = timed(lazy, runs * 10)
    per = len(nodes)
    print(f"  check_login success: now {lazy_s / per * 1e6:.2f} us, text built up front "
          f"{eager_s / per * 1e6:.2f} us ({lazy_s / eager_s:.2f}x)")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def against_server(docs: list[dict[str, Any]], page: int, runs: int) -> None:
    from certgate.client.cluster import connect

    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        data_dir = Path(tmp) / "data"
        diag = free_port()
        log = (Path(tmp) / "auth.log").open("wb")
        auth = subprocess.Popen(
            [str(BIN / "certgate"), "start", "--roles", "auth,proxy", "--data-dir", str(data_dir),
             "--auth-listen", f"127.0.0.1:{free_port()}",
             "--web-listen", f"127.0.0.1:{free_port()}",
             "--ssh-proxy-listen", f"127.0.0.1:{free_port()}",
             "--kube-proxy-listen", f"127.0.0.1:{free_port()}",
             "--diag-addr", f"127.0.0.1:{diag}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not (data_dir / "admin" / "bundle.json").exists():
                if time.monotonic() > deadline or auth.poll() is not None:
                    raise SystemExit(f"auth did not start: see {log.name}")
                time.sleep(0.2)
            time.sleep(1)
            # In chunks: one request body per chunk stays under the API's size limit.
            for start in range(0, len(docs), 100):
                load = Path(tmp) / "load.yaml"
                load.write_text(yaml.safe_dump_all(docs[start : start + 100]))
                loaded = subprocess.run(
                    [str(BIN / "cgctl"), "--data-dir", str(data_dir), "create", str(load)],
                    capture_output=True, text=True, env={**os.environ},
                )  # fmt: skip
                if loaded.returncode != 0:
                    raise SystemExit(f"cgctl create: {loaded.stderr.strip()}")
            api = connect(data_dir)
            try:
                first_s, first = timed(
                    lambda: api.call("GET", "/access", params={"limit": str(page)}), runs
                )
                print(f"real auth (SQLite): GET /v1/access, p50 of {runs}")
                print(f"  first page of {page:<5}    {first_s * 1000:8.1f} ms")
                key = _key(first["rows"][-1])
                params = {"limit": str(page), "start_key": key}
                second_s, _ = timed(lambda: api.call("GET", "/access", params=params), runs)
                print(f"  second page of {page:<5}   {second_s * 1000:8.1f} ms")
                middle = f"bm-user-{len([d for d in docs if d['kind'] == 'user']) // 2:03}"
                params = {"limit": str(page), "start_key": encode_key((middle, 0, "", ""))}
                mid_s, _ = timed(lambda: api.call("GET", "/access", params=params), runs)
                print(f"  page at {middle:<12}    {mid_s * 1000:8.1f} ms")
                # The baseline last: the whole matrix in one answer, as before paging.
                try:
                    whole_s, whole = timed(lambda: api.call("GET", "/access"), 1)
                except CertgateError as exc:
                    print(f"  whole matrix: no answer ({exc.message})")
                else:
                    print(f"  whole matrix ({len(whole['rows'])} rows) {whole_s * 1000:8.1f} ms"
                          f"   first page {first_s / whole_s:.3f}x of it")  # fmt: skip
            finally:
                api.close()
        finally:
            auth.terminate()
            try:
                auth.wait(30)
            except subprocess.TimeoutExpired:
                auth.kill()  # still computing a matrix nobody waits for
                auth.wait(30)
            log.close()


def _key(row: dict[str, Any]) -> str:
    if row["kind"] == "node":
        return encode_key((row["user"], 0, row["node"], row["login"]))
    return encode_key((row["user"], 1, row["kube_cluster"], ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--page", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-server", action="store_true", help="in process only")
    parser.add_argument("--server-only", action="store_true", help="the real auth only")
    args = parser.parse_args()
    docs = documents(args.nodes, args.users)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine?)")
    if not args.server_only:
        in_process(docs, args.page, args.runs)
    if not args.no_server:
        against_server(docs, args.page, args.runs)


if __name__ == "__main__":
    main()
