"""A certgate cluster with a kube service in front of the Kubernetes stand-in, and
kubectl run as a user types it (tests/support/kube_standin.py is the API server)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import BIN, Cluster, User
from tests.support.kube_standin import Grant, KubeStandin
from tests.support.net import free_port

KUBECTL = BIN / "kubectl"


@dataclass
class KubeSetup:
    cluster: Cluster
    standin: KubeStandin
    kube_proxy_port: int
    service: subprocess.Popen[bytes] | None = None
    service_port: int = 0  # where the kube service of its own process listens
    in_proxy_port: int = 0  # where a kube service in the proxy's process listens

    def start_kube_service(
        self, name: str = "kube-1", labels: str = "env=dev", cluster_name: str = "dev-cluster"
    ) -> None:
        out = self.cluster.cgctl("tokens", "add", "--type=kube", "--ttl=5m").stdout
        join = next(line for line in out.splitlines() if line.startswith("certgate start"))
        kubeconfig = self.standin.kubeconfig(self.cluster.workdir / "standin.kubeconfig")
        log = self.cluster.workdir / f"{name}.log"
        self.service_port = free_port()
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [str(BIN / "certgate"), *join.split()[1:], "--nodename", name,
                 "--kubeconfig", str(kubeconfig), "--kube-cluster-name", cluster_name,
                 "--labels", labels, "--data-dir", str(self.cluster.workdir / name),
                 "--kube-listen", f"127.0.0.1:{self.service_port}", "--diag-addr", "",
                 "--heartbeat-interval", "1s"],
                stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.cluster.nodes.append(process)
        self.service = process
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kube service exited:\n{log.read_text()}")
            if "kube service listening" in log.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"kube service did not start:\n{log.read_text()}")

    def kubeconfig(self, user: User) -> Path:
        return user.home / "kubeconfig"

    def env(self, user: User) -> dict[str, str]:
        return {
            **os.environ,
            "CERTGATE_HOME": str(user.home),
            "KUBECONFIG": str(self.kubeconfig(user)),
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        }

    def kube_login(self, user: User, name: str = "dev-cluster") -> subprocess.CompletedProcess[str]:
        return self.cgsh(user, "kube", "login", name)

    def cgsh(self, user: User, *args: str) -> subprocess.CompletedProcess[str]:
        """cgsh as `user`, with the user's kubeconfig (KUBECONFIG) as kubectl has it."""
        return subprocess.run(
            [str(BIN / "cgsh"), *args],
            capture_output=True, text=True, env=self.env(user), timeout=60,
        )  # fmt: skip

    def kubectl(
        self, user: User, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KUBECTL), *args], capture_output=True, text=True, env=self.env(user),
            input=input, timeout=timeout,
        )  # fmt: skip

    def kubectl_process(self, user: User, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(KUBECTL), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=self.env(user),
        )  # fmt: skip


@contextmanager
def started_kube(
    workdir: Path,
    grants: list[Grant],
    roles: str,
    cluster_name: str = "dev-cluster",
    in_proxy: str = "",
) -> Iterator[KubeSetup]:
    """The stand-in (with `grants` on top of its own), a cluster (auth + proxy) with
    `roles` created, and one kube service for `cluster_name`; all stopped afterwards.
    `in_proxy`: the name of a second cluster, served by a kube service in the proxy's
    own process (`--roles auth,proxy,kube`)."""
    standin = KubeStandin(workdir)
    standin.grants += grants
    standin.start()
    cluster = Cluster(workdir)
    in_proxy_port = 0
    if in_proxy:
        in_proxy_port = free_port()
        kubeconfig = standin.kubeconfig(workdir / "in-proxy.kubeconfig")
        cluster.roles = "auth,proxy,kube"
        cluster.extra_args = [
            "--kubeconfig", str(kubeconfig), "--kube-cluster-name", in_proxy,
            "--kube-listen", f"127.0.0.1:{in_proxy_port}",
        ]  # fmt: skip
    cluster.start()
    setup = KubeSetup(cluster, standin, cluster.kube_proxy_port, in_proxy_port=in_proxy_port)
    try:
        setup.start_kube_service(cluster_name=cluster_name)
        cluster.cgctl("create", "-f", "-", input=roles)
        yield setup
    finally:
        cluster.stop()
        standin.stop()
