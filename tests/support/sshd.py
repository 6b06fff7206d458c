"""A throwaway OpenSSH sshd on a free loopback port that trusts only certificates."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import Cluster
from tests.support.net import free_port, wait_for_port

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    log: Path
    workdir: Path


def make_host_key(workdir: Path) -> Path:
    key = workdir / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@contextmanager
def run_sshd(
    workdir: Path,
    trusted_user_ca: str,
    host_key: Path | None = None,
    host_cert: str | None = None,
    extra_config: str = "",
) -> Iterator[Sshd]:
    """sshd with `TrustedUserCAKeys` = `trusted_user_ca`; logins must be cert principals."""
    workdir.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key = host_key or make_host_key(workdir)
    trusted = workdir / "trusted_user_ca"
    trusted.write_text(trusted_user_ca.strip() + "\n")
    cert_line = ""
    if host_cert:
        cert_path = workdir / "host-cert.pub"
        cert_path.write_text(host_cert.strip() + "\n")
        cert_line = f"HostCertificate {cert_path}"
    log = workdir / "sshd.log"
    for _attempt in range(3):
        port = free_port()
        config = workdir / "sshd_config"
        config.write_text(
            f"""ListenAddress 127.0.0.1:{port}
HostKey {host_key}
{cert_line}
PidFile {workdir / "sshd.pid"}
TrustedUserCAKeys {trusted}
AuthorizedPrincipalsFile none
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
LogLevel VERBOSE
{extra_config}
"""
        )
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            if wait_for_port(port, process, timeout=10):
                yield Sshd(port=port, log=log, workdir=workdir)
                return
        finally:
            process.terminate()
            process.wait(timeout=10)
    raise RuntimeError(f"sshd did not start: {log.read_text()}")


@contextmanager
def agentless_sshd(cluster: Cluster, name: str, labels: str) -> Iterator[Sshd]:
    """A stock sshd set up as docs/agentless.md says (`cgctl auth sign`, `cgctl auth
    export`) and registered as agentless node `name` with `labels` (a YAML mapping)."""
    etc = cluster.workdir / f"openssh-{name}"
    key = etc / "certgate_host"
    etc.mkdir(parents=True, exist_ok=True)
    cluster.cgctl(
        "auth", "sign", f"--host={name}", "--principals=127.0.0.1", "--ttl=1h",
        "--format=openssh", f"--out={key}",
    )  # fmt: skip
    user_ca = cluster.cgctl("auth", "export", "--type=user").stdout
    host_cert = (etc / "certgate_host-cert.pub").read_text()
    with run_sshd(etc, user_ca, host_key=key, host_cert=host_cert) as server:
        node = (
            f"kind: node\nmetadata: {{name: {name}, labels: {labels}}}\n"
            f'spec: {{sub_kind: openssh, addr: "127.0.0.1:{server.port}"}}\n'
        )
        cluster.cgctl("create", "-f", "-", input=node)
        yield server
