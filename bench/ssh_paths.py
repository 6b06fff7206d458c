"""Throughput and session setup of the SSH paths through certgate, against an OpenSSH bastion.

    .venv/bin/python bench/ssh_paths.py [--size 1G] [--rounds 3] [--setups 20]

In one run on this machine, the OpenSSH client (`ssh`, default options) in every case:

  (a) `ssh -J` through the certgate proxy to a certgate node (its own process),
  (b) `ssh -J` through the certgate proxy to an agentless OpenSSH sshd (the proxy
      terminates SSH, decides, and connects on with a one-minute certificate),
  (c) baseline: an OpenSSH sshd as jump host to an OpenSSH sshd — the bastion a user
      would otherwise build.

Throughput: `head -c SIZE /dev/zero` on the far side, read by this script from ssh's
stdout, timed from the first byte to the last; median of `--rounds`. Setup: `ssh ...
true`, wall time, median of `--setups` runs. The paths take turns (a, b, c, a, b, c...)
so a busy moment of the machine does not fall on one path only. Ratios are to (c).
(a) and (b) use `cgsh config` as a user would; (c) uses the same user certificate,
which both sshds trust (TrustedUserCAKeys), and host certificates from `cgctl auth sign`.

Figures are printed, never asserted (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.cluster import Cluster, User  # noqa: E402
from tests.support.sshd import run_sshd  # noqa: E402
from tests.support.unix import ensure_user  # noqa: E402

LOGIN = "cgbench"
ROLE = f"""\
kind: role
metadata: {{name: bench}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{"*": "*"}}
"""
CHUNK = 1024 * 1024


@dataclass
class Path_:
    label: str
    argv: list[str]  # ssh ... [LOGIN@]HOST, the command is appended


@dataclass
class Result:
    label: str
    mib_per_s: float
    setup_ms: float


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def throughput(argv: list[str], size: int) -> float:
    """MiB/s of `head -c size /dev/zero` over `argv`, first byte to last."""
    process = subprocess.Popen(
        [*argv, f"head -c {size} /dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    fd = process.stdout.fileno()
    first = os.read(fd, CHUNK)
    started = time.perf_counter()
    received = len(first)
    while chunk := os.read(fd, CHUNK):
        received += len(chunk)
    elapsed = time.perf_counter() - started
    _, err = process.communicate()
    if process.returncode != 0 or received != size:
        raise RuntimeError(f"{' '.join(argv)}: got {received} of {size} bytes: {err.decode()}")
    return (received - len(first)) / elapsed / 1024**2


def setup_time(argv: list[str]) -> float:
    """Wall time (s) of `ssh ... true`."""
    started = time.perf_counter()
    result = subprocess.run([*argv, "true"], capture_output=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} true: {result.stderr.decode()}")
    return elapsed


def sign_host(cluster: Cluster, name: str, out: Path) -> tuple[Path, str]:
    cluster.cgctl(
        "auth", "sign", f"--host={name}", "--principals=127.0.0.1", "--format=openssh",
        f"--out={out}",
    )  # fmt: skip
    return out, Path(f"{out}-cert.pub").read_text()


def baseline_config(user: User, jump_port: int, target_port: int, path: Path) -> Path:
    keys = user.home / "keys"
    common = (
        f"    User {LOGIN}\n"
        "    HostName 127.0.0.1\n"
        f"    IdentityFile {keys / 'key'}\n"
        f"    CertificateFile {keys / 'key-cert.pub'}\n"
        f"    UserKnownHostsFile {keys / 'known_hosts'}\n"
        "    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking yes\n"
        "    BatchMode yes\n"
    )
    path.write_text(
        f"Host bench-jump\n    Port {jump_port}\n{common}"
        f"Host bench-target\n    Port {target_port}\n    ProxyJump bench-jump\n{common}"
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="bytes per transfer (1G, 256M, ...)")
    parser.add_argument("--setups", type=int, default=20, help="`ssh ... true` runs per path")
    parser.add_argument("--rounds", type=int, default=3, help="transfers per path")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    ensure_user(LOGIN)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="certgate-bench-ssh-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        cluster = Cluster(workdir / "cluster", roles="auth,proxy")
        cluster.start()
        stack.callback(cluster.stop)
        cluster.start_node("bench-node", "env=bench")
        cluster.cgctl("create", "-f", "-", input=ROLE)
        user_ca = cluster.cgctl("auth", "export", "--type=user").stdout

        sshds = {}
        for name in ("bench-sshd", "bench-jump", "bench-target"):
            key, cert = sign_host(cluster, name, workdir / name / "host_key")
            sshds[name] = stack.enter_context(
                run_sshd(
                    workdir / name, user_ca, host_key=key, host_cert=cert,
                    extra_config="LogLevel ERROR",
                )
            )  # fmt: skip
        cluster.cgctl(
            "create", "-f", "-",
            input="kind: node\n"
            "metadata: {name: bench-sshd, labels: {env: bench}}\n"
            f'spec: {{sub_kind: openssh, addr: "127.0.0.1:{sshds["bench-sshd"].port}"}}\n',
        )  # fmt: skip
        user = cluster.add_user("bencher", roles="bench")
        cluster.login(user)
        cgsh_config = workdir / "cgsh_ssh_config"
        cgsh_config.write_text(cluster.cgsh(user, "config").stdout)
        base_config = baseline_config(
            user, sshds["bench-jump"].port, sshds["bench-target"].port, workdir / "baseline"
        )
        batch = ["-o", "BatchMode=yes"]
        paths = [
            Path_(
                "(a) ssh -J certgate proxy -> certgate node",
                ["ssh", "-F", str(cgsh_config), *batch, f"{LOGIN}@bench-node"],
            ),
            Path_(
                "(b) ssh -J certgate proxy -> agentless sshd",
                ["ssh", "-F", str(cgsh_config), *batch, f"{LOGIN}@bench-sshd"],
            ),
            Path_(
                "(c) ssh -J OpenSSH sshd -> OpenSSH sshd",
                ["ssh", "-F", str(base_config), "bench-target"],
            ),
        ]
        for path in paths:  # warm up: first connections, certificate caches, page cache
            setup_time(path.argv)
        speeds: dict[str, list[float]] = {path.label: [] for path in paths}
        setups: dict[str, list[float]] = {path.label: [] for path in paths}
        for _ in range(args.rounds):
            for path in paths:
                speeds[path.label].append(throughput(path.argv, size))
        for _ in range(args.setups):
            for path in paths:
                setups[path.label].append(setup_time(path.argv))
        results = [
            Result(
                path.label,
                statistics.median(speeds[path.label]),
                statistics.median(setups[path.label]) * 1000,
            )
            for path in paths
        ]

    version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    base = results[-1]
    print(
        f"SSH paths, {version} client with default options, loopback, {os.cpu_count()} cores;"
        f" throughput = median of {args.rounds} transfers of {args.size} from /dev/zero,"
        f" setup = median of {args.setups} `ssh ... true`"
    )
    print(f"{'path':46} {'throughput':>12} {'vs (c)':>7} {'setup':>10} {'vs (c)':>7}")
    for r in results:
        print(
            f"{r.label:46} {r.mib_per_s:8.0f} MiB/s {r.mib_per_s / base.mib_per_s:6.2f}x"
            f" {r.setup_ms:7.0f} ms {r.setup_ms / base.setup_ms:6.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
