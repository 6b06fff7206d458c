"""The node SSH server against real OpenSSH clients and real Unix users.

Each test logs in with a certificate from the user CA (or a bad one) and checks what
a user would see, plus the audit events and session hooks the node exposes.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pexpect  # type: ignore[import-untyped]
import pytest

from certgate.auth.ca import CASigner, generate_authority
from tests.support.unix import ensure_account
from tests.support.wait import eventually

from .conftest import (
    ALICE,
    BLOCKED_REASON,
    BOB,
    EXTRA_GROUP,
    ROLE_AGENT,
    ROLE_BLOCKED,
    ROLE_FORWARD,
    Authorities,
    CredsFactory,
    Node,
    UserCreds,
    needs_openssh,
)

pytestmark = needs_openssh

PROMPT = "cg-ready> "
NOLOGIN = "cgtnologin"  # an account whose shell is /usr/sbin/nologin


def wait_for_shell(child: pexpect.spawn) -> None:
    """Wait for bash's first prompt, then switch to one no command echo can match."""
    child.expect(r"[$#] ")
    child.sendline("PS1='cg-''ready> '")
    child.expect_exact(PROMPT)


def run(
    argv: list[str], *, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=input, env=env, capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def echo_server() -> Iterator[int]:
    """A TCP server on loopback that answers every line with "echo:" + the line."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def talk(port: int, message: bytes) -> bytes:
    """Send `message` to 127.0.0.1:port once it listens; the answer, b"" if cut off."""

    def connect() -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            return None  # the client has not opened its listener yet

    with eventually(connect, timeout=30) as sock:
        try:
            sock.sendall(message)
            return sock.recv(1024)
        except ConnectionResetError:
            return b""


# ---------------------------------------------------------------------------- login


def test_exec_runs_as_the_unix_user_with_a_login_environment(
    node: Node, make_creds: CredsFactory
) -> None:
    creds = make_creds("alice@example.com", (ALICE,))
    result = run(
        node.ssh_argv(
            creds,
            ALICE,
            'id; echo "$HOME|$USER|$LOGNAME|$SHELL|$PATH|$CERTGATE_USER"; pwd',
        )
    )
    assert result.returncode == 0, result.stderr
    expected_id = run(["id", ALICE]).stdout.decode().strip()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == expected_id
    assert EXTRA_GROUP in lines[0]
    entry = pwd.getpwnam(ALICE)
    assert lines[1] == (
        f"{entry.pw_dir}|{ALICE}|{ALICE}|/bin/bash|/usr/local/bin:/usr/bin:/bin:/usr/games"
        "|alice@example.com"
    )
    assert lines[2] == entry.pw_dir

    start = node.wait_for_event("session.start", lambda f: f["user"] == "alice@example.com")
    assert start["login"] == ALICE and start["kind"] == "exec"
    assert start["client_addr"].startswith("127.0.0.1:")
    end = node.wait_for_event("session.end", lambda f: f["session_id"] == start["session_id"])
    assert end["duration"] >= 0 and end["exit_code"] == 0


def test_exit_status_and_signal_propagate(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("exit-tester", (ALICE,))
    assert run(node.ssh_argv(creds, ALICE, "exit 7")).returncode == 7
    exec_event = node.wait_for_event("exec", lambda f: f["user"] == "exit-tester")
    assert exec_event["command"] == "exit 7" and exec_event["exit_code"] == 7

    killed = run(node.ssh_argv(creds, ALICE, "kill -TERM $$"))
    # OpenSSH reports a remote signal as exit status 255 and a message naming it.
    assert killed.returncode == 255
    # The audit names the signal, as OpenSSH's exit-signal does (no negative exit_code).
    event = node.wait_for_event("exec", lambda f: f["command"] == "kill -TERM $$")
    assert event.get("exit_signal") == "TERM" and "exit_code" not in event


def test_stdin_reaches_the_command_and_eof_ends_it(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("stdin-tester", (ALICE,))
    payload = os.urandom(3 * 1024 * 1024)
    result = run(node.ssh_argv(creds, ALICE, "sha256sum"), input=payload)
    assert result.returncode == 0
    assert result.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()


def test_only_allowed_client_environment_passes(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("env-tester", (ALICE,))
    result = run(
        node.ssh_argv(
            creds,
            ALICE,
            'echo "$LC_CERTGATE|$LANG|$LD_PRELOAD|$EVIL"',
            options=(
                "-o",
                "SetEnv=LC_CERTGATE=yes LANG=C.UTF-8 LD_PRELOAD=/tmp/x.so EVIL=1",
            ),
        )
    )
    assert result.stdout.decode().strip() == "yes|C.UTF-8||"


# ---------------------------------------------------------------------------- refusals


def test_authorizer_refusal_fails_login_and_is_audited(
    node: Node, make_creds: CredsFactory
) -> None:
    creds = make_creds("mallory", (ALICE,), roles=(ROLE_BLOCKED,))
    result = run(node.ssh_argv(creds, ALICE, "true"))
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr
    rejected = node.wait_for_event("session.rejected", lambda f: f["user"] == "mallory")
    assert rejected["login"] == ALICE
    assert rejected["reason"] == BLOCKED_REASON
    assert rejected["client_addr"].startswith("127.0.0.1:")
    assert not [f for f in node.events_named("session.start") if f["user"] == "mallory"]


def test_certificate_from_another_ca_is_refused(
    node: Node, make_creds: CredsFactory, authorities: Authorities
) -> None:
    creds = make_creds("stranger", (ALICE,), signer=authorities.other)
    result = run(node.ssh_argv(creds, ALICE, "true"))
    assert result.returncode == 255 and b"Permission denied" in result.stderr


def test_a_certificate_from_a_ca_the_node_stopped_trusting_is_refused_at_the_next_login(
    node: Node, make_creds: CredsFactory, authorities: Authorities
) -> None:
    # The node parses its CA list only when it changes (srv/user_cas.py): a rotation must
    # still apply to the very next login.
    creds = make_creds("rotated", (ALICE,))
    assert run(node.ssh_argv(creds, ALICE, "true")).returncode == 0  # trusted until now
    retired = list(authorities.user_ca_lines)
    successor = generate_authority("user_ssh", "rotated.example", datetime.now(UTC))
    authorities.user_ca_lines[:] = [successor.spec.active_keys[0].public]
    try:
        result = run(node.ssh_argv(creds, ALICE, "true"))
        assert result.returncode == 255 and b"Permission denied" in result.stderr
        fresh = make_creds("rotated", (ALICE,), signer=CASigner(successor))
        assert run(node.ssh_argv(fresh, ALICE, "true")).returncode == 0
    finally:
        authorities.user_ca_lines[:] = retired


@pytest.mark.parametrize(
    "options",
    [
        (),  # OpenSSH's defaults: it settles on aes128-gcm, the first the node offers
        ("-o", "Ciphers=aes256-gcm@openssh.com", "-o", "KexAlgorithms=curve25519-sha256",
         "-o", "HostKeyAlgorithms=ssh-ed25519-cert-v01@openssh.com"),
        ("-o", "Ciphers=aes128-gcm@openssh.com", "-o", "KexAlgorithms=ecdh-sha2-nistp256"),
    ],
)  # fmt: skip
def test_openssh_negotiates_with_its_defaults_and_restricted_lists(
    node: Node, make_creds: CredsFactory, options: tuple[str, ...]
) -> None:
    # The node sends no filler packets under AES-GCM (certcapture.skip_ignore_packets):
    # a session whose output crosses many packets still arrives whole, its status too.
    creds = make_creds("negotiator", (ALICE,))
    command = "head -c 300000 /dev/zero | tr '\\0' x; exit 7"
    result = run(node.ssh_argv(creds, ALICE, command, options=options))
    assert result.returncode == 7, result.stderr
    assert result.stdout == b"x" * 300000


def test_a_cipher_the_node_does_not_offer_is_refused(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("negotiator", (ALICE,))
    options = ("-o", "Ciphers=chacha20-poly1305@openssh.com")
    assert run(node.ssh_argv(creds, ALICE, "true", options=options)).returncode == 255
    # The same login with a cipher it offers works (the refusal was the cipher's).
    assert run(node.ssh_argv(creds, ALICE, "true")).returncode == 0


def test_expired_certificate_is_refused(node: Node, make_creds: CredsFactory) -> None:
    now = datetime.now(UTC)
    creds = make_creds("late", (ALICE,), valid=(now - timedelta(hours=2), now - timedelta(hours=1)))
    result = run(node.ssh_argv(creds, ALICE, "true"))
    assert result.returncode == 255 and b"Permission denied" in result.stderr


def test_login_not_among_the_principals_is_refused(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("alice-only", (ALICE,))
    result = run(node.ssh_argv(creds, BOB, "true"))
    assert result.returncode == 255 and b"Permission denied" in result.stderr


def test_plain_key_without_certificate_is_refused(
    node: Node, make_creds: CredsFactory, tmp_path: Path
) -> None:
    creds = make_creds("keyonly", (ALICE,))
    lonely = tmp_path / "id"
    shutil.copy(creds.key, lonely)
    lonely.chmod(0o600)
    argv = node.ssh_argv(creds, ALICE, "true")
    argv[argv.index(str(creds.key))] = str(lonely)
    argv[argv.index(f"CertificateFile={creds.cert}")] = "CertificateFile=none"
    result = run(argv)
    assert result.returncode == 255 and b"Permission denied" in result.stderr


# ---------------------------------------------------------------------------- terminals


def test_interactive_shell_has_a_pty_that_follows_the_window(
    node: Node, make_creds: CredsFactory
) -> None:
    creds = make_creds("typist", (BOB,))
    child = pexpect.spawn(
        node.ssh_argv(creds, BOB, options=("-tt",))[0],
        node.ssh_argv(creds, BOB, options=("-tt",))[1:],
        dimensions=(30, 100),
        timeout=10,
    )
    try:
        wait_for_shell(child)
        child.sendline("echo hello-$((6*7)); tty; echo $0")
        child.expect(r"hello-42\r\n(/dev/pts/\d+)\r\n-bash\r\n")
        child.expect_exact(PROMPT)
        child.sendline("stty size")
        child.expect(r"30 100\r\n")
        child.expect_exact(PROMPT)
        child.setwinsize(40, 120)

        def pty_size() -> bytes:  # SIGWINCH → ssh → window-change → TIOCSWINSZ, read back
            child.sendline("stty size")
            child.expect(rb"(\d+ \d+)\r\n")
            size: bytes = child.match.group(1)
            child.expect_exact(PROMPT)
            return size

        eventually(lambda: pty_size() == b"40 120")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3

    recorder = next(r for r in node.recorders if r.info.identity.username == "typist")
    assert recorder.info.tty and recorder.info.kind == "shell"
    assert recorder.info.term_size == (100, 30)
    assert b"hello-42" in recorder.output and b"40 120" in recorder.output
    assert (120, 40) in recorder.resizes
    assert recorder.ended


def test_exec_with_a_pty(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("tty-exec", (ALICE,))
    result = run(node.ssh_argv(creds, ALICE, "tty; echo $TERM; exit 4", options=("-tt",)))
    assert result.returncode == 4
    out = result.stdout.decode()
    assert re.search(r"^/dev/pts/\d+\r$", out, re.M), out
    assert "\r\n" in out  # output went through a terminal (onlcr)


def test_terminate_sessions_shows_the_message_and_closes(
    node: Node, make_creds: CredsFactory
) -> None:
    creds = make_creds("victim", (ALICE,))
    argv = node.ssh_argv(creds, ALICE, options=("-tt",))
    child = pexpect.spawn(argv[0], argv[1:], timeout=10)
    bystander = subprocess.Popen(
        node.ssh_argv(make_creds("bystander", (ALICE,)), ALICE, "sleep 30"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_shell(child)
        eventually(
            lambda: {"victim", "bystander"} <= {s.identity.username for s in node.server.sessions()}
        )
        listed = {s.identity.username: s for s in node.server.sessions()}
        assert listed["victim"].kind == "shell" and listed["victim"].login == ALICE
        assert listed["bystander"].command == "sleep 30"

        ended = node.call(
            node.server.terminate_sessions(
                lambda identity, login: identity.username == "victim",
                "certgate: your session was locked by an administrator",
            )
        )
        assert ended == 1
        child.expect("your session was locked by an administrator")
        child.expect(pexpect.EOF)
        assert "victim" not in {s.identity.username for s in node.server.sessions()}
        assert bystander.poll() is None  # other sessions are untouched
        end = node.wait_for_event("session.end", lambda f: f["user"] == "victim")
        assert end["reason"] == "terminated"
    finally:
        child.close()
        bystander.kill()
        bystander.wait()


def test_client_disconnect_kills_the_process_group(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("vanisher", (BOB,))
    # A job with a background child: the whole group must go, not just the shell.
    marker = f"sleep {900 + os.getpid() % 97}"
    client = subprocess.Popen(
        node.ssh_argv(creds, BOB, f"{marker} & {marker}; wait"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def remote_sleeps() -> int:
        found = run(["pgrep", "-u", BOB, "-f", marker])
        return len(found.stdout.split())

    try:
        eventually(lambda: remote_sleeps() >= 2)  # the shell and its two sleeps
    finally:
        client.kill()
        client.wait()
    eventually(lambda: remote_sleeps() == 0, timeout=30)
    end = node.event_for_user("session.end", "vanisher")
    assert end["reason"] == "disconnected"


# ---------------------------------------------------------------------------- files


def test_scp_both_ways_preserves_bytes_and_ownership(
    node: Node, make_creds: CredsFactory, tmp_path: Path
) -> None:
    creds = make_creds("copier", (ALICE,))
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024))
    scp = ["scp", "-P", str(node.port), *creds.ssh_options()]
    up = run([*scp, str(source), f"{ALICE}@127.0.0.1:up.bin"])
    assert up.returncode == 0, up.stderr
    remote = Path(pwd.getpwnam(ALICE).pw_dir) / "up.bin"
    stat = remote.stat()
    assert stat.st_uid == pwd.getpwnam(ALICE).pw_uid
    assert stat.st_gid == pwd.getpwnam(ALICE).pw_gid
    assert remote.read_bytes() == source.read_bytes()

    back = tmp_path / "down.bin"
    down = run([*scp, f"{ALICE}@127.0.0.1:up.bin", str(back)])
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == source.read_bytes()
    node.wait_for_event("session.start", lambda f: f["user"] == "copier" and f["kind"] == "sftp")

    # The SFTP server runs as the login: it cannot write where the login cannot.
    denied = run([*scp, str(source), f"{ALICE}@127.0.0.1:/root/nope.bin"])
    assert denied.returncode != 0
    assert not Path("/root/nope.bin").exists()


def test_sftp_runs_through_the_login_shell_so_a_nologin_account_gets_no_files(
    node: Node, make_creds: CredsFactory, tmp_path: Path
) -> None:
    ensure_account(NOLOGIN, ["-m", "-s", "/usr/sbin/nologin"])
    batch = tmp_path / "batch"
    batch.write_text("ls -a\n")

    def sftp(creds: UserCreds, login: str) -> subprocess.CompletedProcess[bytes]:
        options = ["-P", str(node.port), *creds.ssh_options(), "-b", str(batch)]
        return run(["sftp", *options, f"{login}@127.0.0.1"])

    # Control: the same sftp works for an account with a shell.
    works = sftp(make_creds("sftp-shell", (ALICE,)), ALICE)
    assert works.returncode == 0, works.stderr
    assert b".bashrc" in works.stdout

    # As with sshd, the account's shell decides: nologin refuses commands and sftp alike.
    creds = make_creds("sftp-nologin", (NOLOGIN,))
    command = run(node.ssh_argv(creds, NOLOGIN, "id"))
    assert b"This account is currently not available" in command.stdout + command.stderr
    refused = sftp(creds, NOLOGIN)
    assert refused.returncode != 0
    assert b".profile" not in refused.stdout


def test_rsync_over_ssh(node: Node, make_creds: CredsFactory, tmp_path: Path) -> None:
    creds = make_creds("rsyncer", (ALICE,))
    source = tmp_path / "tree"
    source.mkdir()
    for i in range(5):
        (source / f"f{i}").write_bytes(os.urandom(200_000))
    ssh_cmd = " ".join(["ssh", "-p", str(node.port), *creds.ssh_options()])
    result = run(["rsync", "-a", "-e", ssh_cmd, f"{source}/", f"{ALICE}@127.0.0.1:tree/"])
    assert result.returncode == 0, result.stderr
    remote = Path(pwd.getpwnam(ALICE).pw_dir) / "tree"
    for i in range(5):
        assert (remote / f"f{i}").read_bytes() == (source / f"f{i}").read_bytes()
        assert (remote / f"f{i}").stat().st_uid == pwd.getpwnam(ALICE).pw_uid


def test_50mb_cat_arrives_complete(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("bulk", (ALICE,))
    entry = pwd.getpwnam(ALICE)
    big = Path(entry.pw_dir) / "big.bin"
    data = os.urandom(50 * 1024 * 1024)
    big.write_bytes(data)
    os.chown(big, entry.pw_uid, entry.pw_gid)
    try:
        result = run(node.ssh_argv(creds, ALICE, "cat big.bin"))
    finally:
        big.unlink()
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------- forwarding


def test_local_forward_refused_unless_the_policy_allows_it(
    node: Node, make_creds: CredsFactory
) -> None:
    with echo_server() as target:
        for roles, allowed in (((), False), ((ROLE_FORWARD,), True)):
            creds = make_creds(f"forwarder-{allowed}", (ALICE,), roles=roles)
            local = free_port()
            tunnel = subprocess.Popen(
                node.ssh_argv(creds, ALICE, options=("-N", "-L", f"{local}:127.0.0.1:{target}")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                answer = talk(local, b"ping")
            finally:
                # SIGKILL, not SIGTERM: OpenSSH 9.2's client can miss a SIGTERM that
                # lands while it handles a channel-open failure and then polls forever.
                tunnel.kill()
                tunnel.wait(10)
            event = node.event_for_user("port_forward", creds.identity.username)
            assert event["allowed"] is allowed and event["kind"] == "local"
            assert event["addr"] == f"127.0.0.1:{target}"
            if allowed:
                assert answer == b"echo:ping"
            else:
                assert answer == b""


def test_remote_forward_follows_the_policy(node: Node, make_creds: CredsFactory) -> None:
    with echo_server() as target:
        refused = make_creds("remote-no", (ALICE,))
        remote = free_port()
        result = run(
            node.ssh_argv(
                refused,
                ALICE,
                "true",
                options=("-o", "ExitOnForwardFailure=yes", "-R", f"{remote}:127.0.0.1:{target}"),
            )
        )
        assert result.returncode == 255 and b"forwarding failed" in result.stderr

        allowed = make_creds("remote-yes", (ALICE,), roles=(ROLE_FORWARD,))
        tunnel = subprocess.Popen(
            node.ssh_argv(
                allowed,
                ALICE,
                options=(
                    "-N",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-R",
                    f"{remote}:127.0.0.1:{target}",
                ),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert talk(remote, b"pong") == b"echo:pong"
        finally:
            tunnel.kill()
            tunnel.wait(10)


def test_agent_forwarding_follows_the_policy(
    node: Node, make_creds: CredsFactory, tmp_path: Path
) -> None:
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL)
    try:
        eventually(agent_sock.exists)
        env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock)}
        listed = {}
        for roles in ((), (ROLE_AGENT,)):
            creds = make_creds(f"agent-{bool(roles)}", (BOB,), roles=roles)
            assert run(["ssh-add", str(creds.key)], env=env).returncode == 0
            argv = node.ssh_argv(creds, BOB, "ssh-add -l", options=("-A",))
            argv[argv.index("IdentityAgent=none")] = f"IdentityAgent={agent_sock}"
            listed[bool(roles)] = run(argv, env=env)
        assert listed[True].returncode == 0
        assert b"ECDSA" in listed[True].stdout
        assert listed[False].returncode != 0
        assert (
            node.wait_for_event("agent_forward", lambda f: f["user"] == "agent-False")["allowed"]
            is False
        )
        assert node.wait_for_event("agent_forward", lambda f: f["user"] == "agent-True")["allowed"]
    finally:
        agent.terminate()
        agent.wait(5)
