"""A real certgate cluster in subprocesses on free loopback ports, driven by its CLIs."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.otp import OtpDevice

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class User:
    name: str
    password: str
    otp: OtpDevice
    home: Path


@dataclass
class Cluster:
    workdir: Path
    roles: str = "auth,proxy"
    extra_args: list[str] = field(default_factory=list)
    cluster_name: str = "test.certgate"
    labels: str = "env=dev"
    process: subprocess.Popen[bytes] | None = None
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = self.workdir / "data"
        self.auth_port = free_port()
        self.web_port = free_port()
        self.ssh_proxy_port = free_port()
        self.kube_proxy_port = free_port()
        self.ssh_port = free_port()
        self.diag_port = free_port()
        self.log = self.workdir / "certgate.log"

    @property
    def proxy_addr(self) -> str:
        return f"127.0.0.1:{self.web_port}"

    @property
    def auth_addr(self) -> str:
        return f"127.0.0.1:{self.auth_port}"

    def command(self) -> list[str]:
        return [
            str(BIN / "certgate"),
            "start",
            "--roles", self.roles,
            "--data-dir", str(self.data_dir),
            "--cluster-name", self.cluster_name,
            "--nodename", "node-1",
            "--auth-listen", self.auth_addr,
            "--web-listen", self.proxy_addr,
            "--public-addr", self.proxy_addr,
            "--ssh-proxy-listen", f"127.0.0.1:{self.ssh_proxy_port}",
            "--kube-proxy-listen", f"127.0.0.1:{self.kube_proxy_port}",
            "--ssh-listen", f"127.0.0.1:{self.ssh_port}",
            "--diag-addr", f"127.0.0.1:{self.diag_port}",
            "--labels", self.labels,
            "--heartbeat-interval", "1s",
            *self.extra_args,
        ]  # fmt: skip

    # Deadlines, not waits: generous, for a machine busy with two test workers and more.
    def start(self, timeout: float = 60) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"certgate exited:\n{self.log.read_text()}")
            if self.diag("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        _kill(self.process)  # a failed start leaves nothing running behind the test
        raise RuntimeError(f"certgate not ready in {timeout}s:\n{self.log.read_text()}")

    def start_node(
        self, name: str, labels: str, *extra: str
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Another node process joining with a fresh token, as an admin would add one."""
        out = self.cgctl("tokens", "add", "--type=node", "--ttl=5m").stdout
        join = next(line for line in out.splitlines() if line.startswith("certgate start"))
        port = free_port()
        log = self.workdir / f"{name}.log"
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [str(BIN / "certgate"), *join.split()[1:], "--nodename", name,
                 "--labels", labels, "--data-dir", str(self.workdir / name),
                 "--ssh-listen", f"127.0.0.1:{port}", "--diag-addr", "",
                 "--heartbeat-interval", "1s", *extra],
                stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.nodes.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"node {name} exited:\n{log.read_text()}")
            if "ssh listening" in log.read_text():
                return process, port
            time.sleep(0.05)
        _kill(process)
        raise RuntimeError(f"node {name} did not start:\n{log.read_text()}")

    def stop(self) -> int:
        """SIGTERM every process; one that takes over 15 s is killed, and after
        everything is stopped (nothing is left running) the first such is raised."""
        slow: subprocess.TimeoutExpired | None = None
        for process in [*self.nodes, *([self.process] if self.process else [])]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired as exc:
                    process.kill()
                    process.wait()
                    slow = slow or exc
        if slow is not None:
            raise slow
        return self.process.returncode if self.process else 0

    def diag(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.diag_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def web(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A plain HTTPS call to the proxy, as a script or browser would make it."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"https://{self.proxy_addr}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=_insecure(), timeout=10) as r:
                text = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            status = exc.code
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    # command-line tools ------------------------------------------------------------

    def cgctl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "cgctl"), "--data-dir", str(self.data_dir), *args]
        return self._run(argv, input=input, check=check)

    def cgsh(
        self, user: User, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {"CERTGATE_HOME": str(user.home)}
        return self._run([str(BIN / "cgsh"), *args], input=input, check=check, env=env)

    def _run(
        self, argv: list[str], input: str | None, check: bool, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """run(), and when the command failed because certgate is gone, how it went."""
        try:
            return run(argv, input=input, check=check, env=env)
        except AssertionError as failed:
            code = self.process.poll() if self.process is not None else None
            if code is None:
                raise
            lines = self.log.read_text(errors="replace").splitlines()
            # A crash: what was said just before the fatal error (a C library's failed
            # assertion) matters more than the thread dump that fills the end.
            fatal = next((i for i, x in enumerate(lines) if x.startswith("Fatal Python")), None)
            shown = lines[-20:] if fatal is None else lines[max(0, fatal - 10) : fatal + 30]
            tail = "\n".join(shown)
            raise AssertionError(
                f"{failed}\ncertgate itself exited with {code} (negative: that signal); "
                f"the end of its log:\n{tail}"
            ) from None

    def add_user(self, name: str, roles: str = "access", logins: str = "") -> User:
        args = ["users", "add", name, f"--roles={roles}"]
        if logins:
            args.append(f"--logins={logins}")
        out = self.cgctl(*args).stdout
        token = invite_token(out)
        status, invite = self.web("GET", f"/v1/invites/{token}")
        assert status == 200, invite
        otp = OtpDevice(invite["totp_secret"])
        status, answer = self.web(
            "POST", f"/v1/invites/{token}", {"password": PASSWORD, "otp": otp.next_code()}
        )
        assert status == 204, answer
        return User(name, PASSWORD, otp, self.workdir / "homes" / name)

    def login(
        self, user: User, *extra: str, check: bool = True, otp: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        code = otp or user.otp.next_code()
        return self.cgsh(
            user, "login", f"--proxy={self.proxy_addr}", f"--user={user.name}", "--insecure",
            f"--otp={code}", *extra, input=user.password + "\n", check=check,
        )  # fmt: skip


def cgsh_shell(home: Path, target: str = "root@node-1") -> Any:
    """`cgsh ssh -t TARGET` as the user whose cgsh state is in `home` (a pexpect child),
    once its shell has answered."""
    import pexpect  # type: ignore[import-untyped]

    child = pexpect.spawn(
        str(BIN / "cgsh"),
        ["ssh", "-t", target],
        env={**os.environ, "CERTGATE_HOME": str(home), "TERM": "xterm"},
        timeout=20,
        encoding="utf-8",
    )
    child.sendline("echo READY-$((40+2))")
    child.expect("READY-42")
    return child


def invite_token(text: str) -> str:
    match = re.search(r"/web/invite/([0-9a-f]+)", text)
    assert match, text
    return match.group(1)


def run(
    argv: list[str], input: str | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        argv, input=input, capture_output=True, text=True, env=full_env, timeout=60
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}"
        )
    return result


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=15)
