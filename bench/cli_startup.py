"""How long cgsh and cgctl commands take, start-up included, against a baseline tree.

    .venv/bin/python bench/cli_startup.py [--baseline main] [--runs 10] [--nodes 10000]

The baseline is another git revision of this repository (`git archive REV src` into a
temporary directory), run by the same Python with `PYTHONPATH` pointing at it, so both
trees share the interpreter, the installed libraries and the cluster. One real
`certgate start --roles auth,proxy` on loopback serves both, with `--nodes` agentless
nodes registered (what `cgsh ls` lists) and one user logged in with the `access` role.

Each command runs `--runs` times per tree, the two trees alternating run by run so that
load from elsewhere on the machine falls on both alike. Printed per command: the median
and p90 wall time of each tree in milliseconds, and baseline / current (above 1: faster
now). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import BIN, Cluster, User  # noqa: E402


def baseline_tree(revision: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True
    )
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    # Bytecode as `make install` writes it for this tree: with PYTHONDONTWRITEBYTECODE
    # set, the baseline compiled every module it imported again on every run.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(into / "src")],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return into / "src"


def _register_nodes(cluster: Cluster, count: int) -> None:
    """`count` agentless nodes, by `cgctl create` of 100 at a time (auth's most per call)."""
    documents = [
        f"---\nkind: node\nmetadata: {{name: bench-{i:05d}, labels: {{env: bench, "
        f"shard: s{i % 16}}}}}\nspec: {{sub_kind: openssh, addr: '10.{i // 65536 % 256}."
        f"{i // 256 % 256}.{i % 256}:22'}}\n"
        for i in range(count)
    ]
    for first in range(0, count, 100):
        cluster.cgctl("create", "-f", "-", input="".join(documents[first : first + 100]))


def _time_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.decode()[-500:]}")
    return elapsed


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        work = Path(tmp)
        baseline_src = baseline_tree(args.baseline, work / "baseline")
        cluster = Cluster(work / "cluster")
        cluster.start()
        try:
            user: User = cluster.add_user("bench", roles="access", logins="root")
            cluster.login(user)
            _register_nodes(cluster, args.nodes)
            home = {"CERTGATE_HOME": str(user.home)}
            admin = ["--data-dir", str(cluster.data_dir)]
            commands: list[tuple[str, list[str], dict[str, str]]] = [
                ("cgsh --help", [str(BIN / "cgsh"), "--help"], home),
                ("cgsh --version", [str(BIN / "cgsh"), "--version"], home),
                ("cgsh status", [str(BIN / "cgsh"), "status"], home),
                ("cgsh kube credentials", [str(BIN / "cgsh"), "kube", "credentials"], home),
                (f"cgsh ls ({args.nodes} nodes)", [str(BIN / "cgsh"), "ls"], home),
                ("cgsh ls --format=json", [str(BIN / "cgsh"), "ls", "--format=json"], home),
                ("cgctl --help", [str(BIN / "cgctl"), "--help"], {}),
                ("cgctl get users", [str(BIN / "cgctl"), *admin, "get", "users"], {}),
                ("cgctl users ls", [str(BIN / "cgctl"), *admin, "users", "ls"], {}),
            ]
            trees = {"baseline": str(baseline_src), "current": ""}
            print(
                f"{args.runs} runs per tree, alternating; baseline {args.baseline}; "
                f"{args.nodes} nodes; {os.cpu_count()} cores (shared: check the load)"
            )
            print(f"{'command':<28} {'baseline p50/p90 ms':>20} {'current p50/p90 ms':>20} ratio")
            for label, argv, extra in commands:
                times: dict[str, list[float]] = {name: [] for name in trees}
                for _ in range(args.runs):
                    for name, path in trees.items():
                        env = {**os.environ, **extra}
                        env.pop("PYTHONPATH", None)
                        if path:
                            env["PYTHONPATH"] = path
                        times[name].append(_time_once(argv, env))
                base, now = times["baseline"], times["current"]
                base_ms, now_ms = statistics.median(base) * 1000, statistics.median(now) * 1000
                print(
                    f"{label:<28} {base_ms:>9.0f} / {_p90(base) * 1000:<8.0f}"
                    f" {now_ms:>9.0f} / {_p90(now) * 1000:<8.0f} {base_ms / now_ms:5.2f}x"
                )
            print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
