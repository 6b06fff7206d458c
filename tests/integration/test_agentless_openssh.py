"""An agentless OpenSSH server: a stock sshd set up with `cgctl auth sign` and
`cgctl auth export`, registered with `cgctl create`, reached through the proxy, which
decides on roles and locks itself, records and audits (server=proxy), and connects on
with a one-minute certificate."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.support.cluster import BIN, Cluster, User
from tests.support.net import free_port
from tests.support.sshd import Sshd, run_sshd
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgag"
NODE = "agentless-1"
ROLES = f"""\
kind: role
metadata: {{name: agentless-dev}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{env: agentless}}
  deny:
    logins: [root]
  options: {{port_forwarding: false}}
"""


def _node(name: str, addr: str) -> str:
    return f"""\
kind: node
metadata: {{name: {name}, labels: {{env: agentless}}}}
spec: {{sub_kind: openssh, addr: "{addr}"}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("agentless"), roles="auth,proxy")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLES)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def sshd(cluster: Cluster) -> Iterator[Sshd]:
    """A stock sshd configured the way `cgctl auth sign` says."""
    etc = cluster.workdir / "openssh"
    key = etc / "certgate_host"
    signed = cluster.cgctl(
        "auth", "sign", f"--host={NODE}", "--principals=127.0.0.1", "--ttl=1h",
        "--format=openssh", f"--out={key}",
    ).stdout  # fmt: skip
    assert f"HostKey {key}" in signed
    assert f"HostCertificate {key}-cert.pub" in signed
    assert "TrustedUserCAKeys" in signed and "cgctl auth export --type=user" in signed
    assert key.stat().st_mode & 0o777 == 0o600
    user_ca = cluster.cgctl("auth", "export", "--type=user").stdout
    with run_sshd(
        etc,
        user_ca,
        host_key=key,
        host_cert=(etc / "certgate_host-cert.pub").read_text(),
        extra_config="Subsystem sftp /usr/lib/openssh/sftp-server",  # as Debian's default
    ) as server:
        cluster.cgctl("create", "-f", "-", input=_node(NODE, f"127.0.0.1:{server.port}"))
        yield server


@pytest.fixture(scope="module")
def dev(cluster: Cluster, sshd: Sshd) -> User:
    user = cluster.add_user("adev", roles="agentless-dev")
    cluster.login(user)
    return user


@pytest.fixture(scope="module")
def ssh_config(cluster: Cluster, dev: User) -> Path:
    path = dev.home / "openssh_config"
    path.write_text(cluster.cgsh(dev, "config").stdout)
    assert NODE in path.read_text()
    return path


def stock(config: Path, *args: str, input: str | None = None, timeout: float = 30) -> Any:
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", *args],
        capture_output=True, text=True, timeout=timeout, input=input,
    )  # fmt: skip


def events(cluster: Cluster, *filters: str) -> list[dict[str, Any]]:
    out = cluster.cgctl("audit", "ls", "--format=json", "--limit=500", *filters).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


def test_cgctl_nodes_ls_lists_the_agentless_node(cluster: Cluster, sshd: Sshd) -> None:
    text = cluster.cgctl("nodes", "ls").stdout
    line = next(line for line in text.splitlines() if line.startswith(NODE))
    assert "openssh" in line and f"127.0.0.1:{sshd.port}" in line and "env=agentless" in line
    listed = json.loads(cluster.cgctl("nodes", "ls", "--format=json").stdout)
    node = next(n for n in listed if n["metadata"]["name"] == NODE)
    assert node["spec"]["sub_kind"] == "openssh"


def test_cgsh_ssh_runs_as_the_login_and_passes_exit_codes(cluster: Cluster, dev: User) -> None:
    account = pwd.getpwnam(LOGIN)
    out = cluster.cgsh(dev, "ssh", f"{LOGIN}@{NODE}", "id -un; echo $HOME").stdout
    assert out.split() == [LOGIN, account.pw_dir]
    status = cluster.cgsh(dev, "ssh", f"{LOGIN}@{NODE}", "echo oops >&2; exit 7", check=False)
    assert status.returncode == 7
    assert status.stderr.strip() == "oops"
    assert NODE in cluster.cgsh(dev, "ls").stdout


def test_stock_openssh_relays_stdin_eof_and_signals(
    cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    ok = stock(ssh_config, f"{LOGIN}@{NODE}", "whoami")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == LOGIN
    also = stock(ssh_config, f"{LOGIN}@{NODE}.{cluster.cluster_name}", "whoami")
    assert also.stdout.strip() == LOGIN, also.stderr
    # stdin reaches the command and its EOF ends it.
    echoed = stock(ssh_config, f"{LOGIN}@{NODE}", "wc -c", input="x" * 100_000)
    assert echoed.stdout.strip() == "100000", echoed.stderr
    killed = stock(ssh_config, f"{LOGIN}@{NODE}", "kill -TERM $$")
    assert killed.returncode == 255  # ssh's code for a remote killed by a signal
    assert stock(ssh_config, f"{LOGIN}@{NODE}", "exit 3").returncode == 3


def test_root_is_refused_with_the_reason_in_the_audit_log(
    cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    refused = stock(ssh_config, f"root@{NODE}", "id")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    rejected = eventually(
        lambda: [
            e
            for e in events(cluster, "--event=session.rejected", "--user=adev")
            if e.get("login") == "root"
        ]
    )
    assert rejected[0]["server"] == "proxy"
    assert rejected[0]["node"] == NODE
    assert rejected[0]["reason"] == (
        f'access denied to root@{NODE}: login "root" is denied by role agentless-dev'
    )
    through_cgsh = cluster.cgsh(dev, "ssh", f"root@{NODE}", "id", check=False)
    assert through_cgsh.returncode == 3
    assert through_cgsh.stderr.strip() == (
        f'error: access denied to root@{NODE}: login "root" is denied by role agentless-dev'
    )


def test_scp_and_sftp_keep_contents_and_ownership(
    cluster: Cluster, dev: User, ssh_config: Path, tmp_path: Path
) -> None:
    account = pwd.getpwnam(LOGIN)
    payload = os.urandom(2 * 1024 * 1024)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    remote = Path(account.pw_dir) / "agentless-scp.bin"
    cluster.cgsh(dev, "scp", str(source), f"{LOGIN}@{NODE}:{remote}")
    assert (remote.stat().st_uid, remote.stat().st_gid) == (account.pw_uid, account.pw_gid)
    assert hashlib.sha256(remote.read_bytes()).digest() == hashlib.sha256(payload).digest()
    back = tmp_path / "back.bin"
    copied = subprocess.run(
        ["scp", "-F", str(ssh_config), "-q", f"{LOGIN}@{NODE}:{remote}", str(back)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert back.read_bytes() == payload
    batch = tmp_path / "batch"
    batch.write_text(f"put {source} agentless-sftp.bin\n")
    sftp = subprocess.run(
        ["sftp", "-F", str(ssh_config), "-b", str(batch), f"{LOGIN}@{NODE}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert sftp.returncode == 0, sftp.stderr
    assert (Path(account.pw_dir) / "agentless-sftp.bin").stat().st_uid == account.pw_uid


def test_pty_sessions_work(cluster: Cluster, dev: User, ssh_config: Path) -> None:
    tty = stock(ssh_config, "-tt", f"{LOGIN}@{NODE}", "tty; stty size; echo $TERM")
    assert tty.returncode == 0, tty.stderr
    assert "/dev/pts/" in tty.stdout
    # An interactive shell: commands typed on its terminal, the exit code comes back.
    shell = stock(ssh_config, "-tt", f"{LOGIN}@{NODE}", input="echo hi-$((40+2))\nexit 5\n")
    assert shell.returncode == 5, shell.stderr
    assert "hi-42" in shell.stdout


def test_the_proxy_records_agentless_pty_sessions(
    cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    marker = "recorded-by-the-proxy-" + str(time.monotonic_ns())
    shown = stock(ssh_config, "-tt", f"{LOGIN}@{NODE}", f"echo {marker}")
    assert shown.returncode == 0, shown.stderr
    deadline = time.monotonic() + 15
    while True:
        listed = json.loads(cluster.cgsh(dev, "recordings", "ls", "--format=json").stdout)
        mine = [r for r in listed if r["node"] == NODE and r.get("login") == LOGIN]
        played = [cluster.cgsh(dev, "play", r["id"], "--format=json").stdout for r in mine]
        if any(marker in text for text in played):
            break
        assert time.monotonic() < deadline, "the agentless session was not recorded"
        time.sleep(0.3)


def test_port_forwarding_needs_a_role_that_allows_it(
    cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    refused = stock(
        ssh_config, "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9",
        f"{LOGIN}@{NODE}", "true",
    )  # fmt: skip
    assert refused.returncode == 255
    assert "remote port forwarding failed" in refused.stderr


def test_sessions_are_audited_by_the_proxy(cluster: Cluster, dev: User) -> None:
    cluster.cgsh(dev, "ssh", f"{LOGIN}@{NODE}", "echo audited-agentless")

    def audited() -> list[dict[str, Any]] | None:
        # This command's own session: earlier tests' sessions of adev are in the log too.
        found = events(cluster, "--user=adev", f"--node={NODE}")
        ran = [
            e for e in found if e["event"] == "exec" and "audited-agentless" in e.get("command", "")
        ]
        if not ran:
            return None
        ours = [e for e in found if e.get("session_id") == ran[0].get("session_id")]
        kinds = {e["event"] for e in ours}
        return ours if {"session.start", "session.end", "exec"} <= kinds else None

    found = eventually(audited, timeout=30)
    exec_event = next(e for e in found if e["event"] == "exec")
    assert exec_event["server"] == "proxy"
    assert exec_event["login"] == LOGIN
    assert exec_event["exit_code"] == 0


def test_a_lock_ends_a_live_session(cluster: Cluster, ssh_config: Path) -> None:
    victim = cluster.add_user("alocked", roles="agentless-dev")
    cluster.login(victim)
    config = victim.home / "openssh_config"
    config.write_text(cluster.cgsh(victim, "config").stdout)
    running = subprocess.Popen(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", f"{LOGIN}@{NODE}",
         "echo started; sleep 120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert running.stdout is not None
    assert running.stdout.readline().strip() == "started"  # the session is live
    cluster.cgctl("lock", "--user=alocked", "--message=stop now")
    try:
        _, err = running.communicate(timeout=60)  # well before the sleep would end
    finally:
        running.kill()
    assert running.returncode != 0
    assert "stop now" in err


def test_agentless_sessions_are_listed_and_joined_at_the_proxy(
    cluster: Cluster, dev: User, ssh_config: Path
) -> None:
    watcher = cluster.add_user("awatch", roles="auditor")  # observes every session
    cluster.login(watcher)
    shell = pexpect.spawn(
        "ssh", ["-F", str(ssh_config), "-tt", f"{LOGIN}@{NODE}"], timeout=15, encoding="utf-8"
    )
    shell.sendline("echo READY-$((40+2))")
    shell.expect("READY-42")

    def listed() -> list[dict[str, Any]]:
        out = cluster.cgsh(watcher, "sessions", "ls", "--format=json").stdout
        return [s for s in json.loads(out) if s["node"] == NODE and s["user"] == "adev"]

    deadline = time.monotonic() + 15
    while not (found := listed()):
        assert time.monotonic() < deadline, "the agentless session was not tracked"
        time.sleep(0.2)
    session_id = found[0]["id"]
    assert found[0]["join_modes"] == ["observer"]

    observer = pexpect.spawn(
        str(BIN / "cgsh"), ["join", session_id],
        env={**os.environ, "CERTGATE_HOME": str(watcher.home), "TERM": "xterm"},
        timeout=15, encoding="utf-8",
    )  # fmt: skip
    observer.expect(f"joined session {session_id} as observer")
    shell.expect_exact("awatch joined (observer)")
    shell.sendline("echo LIVE-$((6*7))")
    observer.expect("LIVE-42")
    observer.send("echo NOPE-$((1+1))\r")
    shell.sendline("echo AFTER-$((2+2))")
    shell.expect("AFTER-4")
    assert "NOPE-2" not in shell.before
    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    observer.expect("the session has ended")
    observer.expect(pexpect.EOF)
    eventually(
        lambda: any(
            e["session_id"] == session_id and e["user"] == "awatch" and e["server"] == "proxy"
            for e in events(cluster, "--event=session.join")
        )
    )


def _silent_listener() -> tuple[socket.socket, int]:
    """A port that accepts connections and never says anything (a hung sshd)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                # The test closed the listener: let go of what it held, too.
                for connection in held:
                    connection.close()
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_an_unreachable_sshd_fails_within_5s_naming_the_node(cluster: Cluster, dev: User) -> None:
    closed = free_port()
    silent, silent_port = _silent_listener()
    try:
        cluster.cgctl("create", "-f", "-", input=_node("agentless-down", f"127.0.0.1:{closed}"))
        cluster.cgctl(
            "create", "-f", "-", input=_node("agentless-hung", f"127.0.0.1:{silent_port}")
        )
        config = dev.home / "openssh_config_down"
        config.write_text(cluster.cgsh(dev, "config").stdout)

        started = time.monotonic()
        down = cluster.cgsh(dev, "ssh", f"{LOGIN}@agentless-down", "true", check=False)
        assert down.returncode != 0
        assert 'node "agentless-down"' in down.stderr and "unreachable" in down.stderr
        down_stock = stock(config, f"{LOGIN}@agentless-down", "true")
        assert down_stock.returncode == 255
        assert 'node "agentless-down"' in down_stock.stderr
        # The proxy gives up on its own (4.5 s deadline); the bound leaves room for a loaded
        # machine and stays below the client's own 20 s timeout.
        assert time.monotonic() - started < 15

        started = time.monotonic()
        hung = stock(config, f"{LOGIN}@agentless-hung", "true", timeout=20)
        elapsed = time.monotonic() - started
        assert hung.returncode == 255
        assert 'node "agentless-hung"' in hung.stderr, hung.stderr
        assert "did not answer in time" in hung.stderr, hung.stderr  # the proxy's deadline
        assert elapsed < 15, elapsed
    finally:
        silent.shutdown(socket.SHUT_RDWR)  # wakes the accept thread, which cleans up
        silent.close()
