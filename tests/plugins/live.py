"""A real cluster with requesters and reviewers, and plugins run as `certgate plugin`
subprocesses — shared by tests/integration/test_plugins_*.py."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from certgate.rpc.auth_client import AuthClient
from certgate.rpc.identity_files import IdentityFiles
from tests.support.cluster import BIN, Cluster, User
from tests.support.wait import eventually

ROLES = """
kind: role
version: v1
metadata: {name: kube-admin}
spec: {allow: {kubernetes_groups: [admins], kubernetes_labels: {"*": "*"}}}
---
kind: role
version: v1
metadata: {name: dev}
spec:
  allow:
    request:
      roles: [kube-admin]
      thresholds: [{approve: 2, deny: 1}]
      max_duration: 4h
---
kind: role
version: v1
metadata: {name: lead}
spec:
  allow:
    review_requests: {roles: [kube-admin]}
"""


@dataclass
class People:
    alice: User  # asks
    bob: User  # reviews
    carol: User  # reviews


def setup_people(cluster: Cluster, workdir: Path) -> People:
    roles = workdir / "roles.yaml"
    roles.write_text(ROLES)
    cluster.cgctl("create", str(roles))
    people = People(
        cluster.add_user("alice", roles="dev"),
        cluster.add_user("bob", roles="lead"),
        cluster.add_user("carol", roles="lead"),
    )
    for user in (people.alice, people.bob, people.carol):
        cluster.login(user)
    return people


def api(cluster: Cluster, user: User) -> AuthClient:
    """The public API as `user`, through the proxy (what cgsh does underneath)."""
    identity = IdentityFiles.load(user.home / "keys")
    return AuthClient(f"https://{cluster.proxy_addr}", identity.tls_context(insecure=True))


def create_request(cluster: Cluster, user: User, **body: Any) -> dict[str, Any]:
    client = api(cluster, user)
    try:
        answer: dict[str, Any] = client.call(
            "POST",
            "/v1/api/access_requests",
            json={"roles": ["kube-admin"], "max_duration": "4h", **body},
        )
        return answer
    finally:
        client.close()


def review(cluster: Cluster, user: User, rid: str, verdict: str, reason: str) -> dict[str, Any]:
    client = api(cluster, user)
    try:
        answer: dict[str, Any] = client.call(
            "POST",
            f"/v1/api/access_requests/{rid}/reviews",
            json={"verdict": verdict, "reason": reason},
        )
        return answer
    finally:
        client.close()


def plugin_identity(cluster: Cluster, workdir: Path, name: str) -> Path:
    """A plugin user with the access-plugin preset, and its identity from cgctl auth sign."""
    cluster.cgctl("users", "add", name, "--roles=access-plugin")
    out = workdir / f"{name}-identity"
    cluster.cgctl("auth", "sign", f"--user={name}", "--ttl=720h", f"--out={out}")
    return out


class PluginProcess:
    """`certgate plugin NAME --config FILE`, its log kept in the workdir."""

    def __init__(self, name: str, config: dict[str, Any], workdir: Path) -> None:
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = workdir / f"{name}-plugin.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> PluginProcess:
        self.starts += 1
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "certgate"), "plugin", self.name, "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        eventually(lambda: self._ready_count() >= self.starts, timeout=30)
        return self

    def _ready_count(self) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"plugin exited {self.process.returncode}:\n{self.text()}")
        return self.text().count(f"{self.name} plugin ready")

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def kill(self) -> None:
        """kill -9: no chance to finish anything."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)
