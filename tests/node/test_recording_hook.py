"""Recording on a node, against real OpenSSH clients: which sessions are recorded under
`record_session`, and what `strict` does when the recording cannot be written."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certgate.api.identity import Identity
from certgate.node.sshd import NodeSSHServer
from certgate.recording.asciicast import CastReader
from certgate.recording.node_recordings import NodeRecordings
from certgate.recording.recorder import SessionRecorder
from certgate.srv.recording_hook import SFTP_UNDER_STRICT, RecordingHook
from certgate.srv.session import SessionInfo, SessionObserver

from .conftest import ALICE, Authorities, CredsFactory, authorize, needs_openssh

pytestmark = needs_openssh

PROMPT = "cg-ready> "


@dataclass
class RecordingNode:
    server: NodeSSHServer
    port: int
    loop: asyncio.AbstractEventLoop
    recordings: NodeRecordings
    uploads: dict[str, tuple[bytes, bool]]
    events: list[tuple[str, dict[str, Any]]]
    observers: list[SessionObserver | None] = field(default_factory=list)

    def ssh(self, creds: Any, *args: str) -> list[str]:
        return ["ssh", "-p", str(self.port), *creds.ssh_options(), *args]

    def wait(self, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    def upload_for(self, user: str) -> tuple[CastReader, bool]:
        for data, incomplete in list(self.uploads.values()):
            reader = CastReader(data.split(b"\n"))
            if reader.header.user == user:
                return reader, incomplete
        raise AssertionError(f"no recording of {user}")


def mode_for(identity: Identity, kind: str) -> str:
    assert kind == "ssh"
    for mode in ("strict", "off"):
        if mode in identity.roles:
            return mode
    return "best_effort"


@pytest.fixture(scope="module")
def rnode(
    unix_users: Any, authorities: Authorities, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RecordingNode]:
    uploads: dict[str, tuple[bytes, bool]] = {}
    events: list[tuple[str, dict[str, Any]]] = []

    async def send(
        session_id: str, chunks: AsyncIterable[bytes], incomplete: bool, truncated: bool
    ) -> None:
        uploads[session_id] = (b"".join([chunk async for chunk in chunks]), incomplete)

    async def audit(event: str, fields: dict[str, Any]) -> None:
        events.append((event, fields))

    host_key = ed25519.Ed25519PrivateKey.generate()
    public = host_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    host_cert = authorities.host.sign_host_ssh(
        public.decode(), "node-r", ["127.0.0.1"], datetime.now(UTC) + timedelta(hours=1)
    )
    key_pem = host_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="recording-node", daemon=True)
    thread.start()
    holder: dict[str, NodeSSHServer] = {}
    recordings = NodeRecordings(tmp_path_factory.mktemp("node-r") / "recordings", send)
    hook = RecordingHook(
        recordings,
        "node-r",
        mode_for,
        lambda sid, msg, reason: holder["server"].end_session(sid, msg, reason),
        lambda event, fields: events.append((event, fields)),
    )
    observers: list[SessionObserver | None] = []

    def observe(info: SessionInfo) -> SessionObserver | None:
        observer = hook(info)
        observers.append(observer)
        return observer

    async def build() -> tuple[NodeSSHServer, int]:
        await recordings.start()
        server = NodeSSHServer(
            key_pem,
            host_cert,
            lambda: authorities.user_ca_lines,
            authorize,
            audit,
            "node-r",
            session_observer=observe,
        )
        holder["server"] = server
        return server, await server.start("127.0.0.1", 0)

    server, port = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
    node = RecordingNode(server, port, loop, recordings, uploads, events, observers)
    try:
        yield node
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        asyncio.run_coroutine_threadsafe(recordings.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_strict_records_exec_output_with_the_command(
    rnode: RecordingNode, make_creds: CredsFactory
) -> None:
    creds = make_creds("exec-strict", (ALICE,), ("strict",))
    result = subprocess.run(
        rnode.ssh(creds, f"{ALICE}@127.0.0.1", "echo out-marker; echo err-marker >&2; exit 3"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert b"out-marker" in result.stdout and b"err-marker" in result.stderr
    rnode.wait(lambda: any(b"exec-strict" in data for data, _ in rnode.uploads.values()))
    reader, incomplete = rnode.upload_for("exec-strict")
    assert not incomplete
    assert reader.header.kind == "exec"
    assert reader.header.command == "echo out-marker; echo err-marker >&2; exit 3"
    shown = "".join(e.data for e in reader.events())
    assert "out-marker" in shown and "err-marker" in shown
    # Announced to auth as the recording began: an exec has no tracker, and auth stores
    # a recording only from the host that announced its session.
    announced = [f for e, f in list(rnode.events) if e == "session.recording.start"]
    assert {"session_id": reader.header.session_id, "user": "exec-strict", "login": ALICE,
            "kind": "exec", "node": "node-r"} in announced  # fmt: skip


def test_strict_records_a_shell_without_a_pty(
    rnode: RecordingNode, make_creds: CredsFactory
) -> None:
    creds = make_creds("shell-t-strict", (ALICE,), ("strict",))
    # `ssh -T` with commands piped in: a shell, not a command, and no terminal.
    result = subprocess.run(
        rnode.ssh(creds, "-T", f"{ALICE}@127.0.0.1"),
        input=b"echo piped-$((6*7))\necho to-stderr-$((6*7)) >&2\n",
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert b"piped-42" in result.stdout and b"to-stderr-42" in result.stderr
    rnode.wait(lambda: any(b"shell-t-strict" in data for data, _ in rnode.uploads.values()))
    reader, incomplete = rnode.upload_for("shell-t-strict")
    assert not incomplete
    assert (reader.header.kind, reader.header.command) == ("shell", None)
    shown = "".join(e.data for e in reader.events())
    assert "piped-42" in shown and "to-stderr-42" in shown
    start = next(
        f for e, f in rnode.events if e == "session.start" and f["user"] == "shell-t-strict"
    )
    assert (start["kind"], start["tty"]) == ("shell", False)


def test_strict_refuses_sftp_which_cannot_be_recorded(
    rnode: RecordingNode, make_creds: CredsFactory, tmp_path: Path
) -> None:
    batch = tmp_path / "batch"
    batch.write_text("ls -a\n")

    def sftp(creds: Any) -> subprocess.CompletedProcess[bytes]:
        argv = rnode.ssh(creds, f"{ALICE}@127.0.0.1")
        argv[:3] = ["sftp", "-P", str(rnode.port)]
        argv[-1:-1] = ["-b", str(batch)]
        return subprocess.run(argv, capture_output=True, timeout=30)

    # Control: under best_effort sftp runs, unrecorded.
    relaxed = sftp(make_creds("sftp-relaxed", (ALICE,)))
    assert relaxed.returncode == 0 and b".bashrc" in relaxed.stdout, relaxed.stderr
    # Under strict it is refused before sftp-server runs, with one line saying why.
    refused = sftp(make_creds("sftp-strict", (ALICE,), ("strict",)))
    assert refused.returncode != 0 and b".bashrc" not in refused.stdout
    assert b"certgate: cannot start session: " + SFTP_UNDER_STRICT.encode() in refused.stderr
    rnode.wait(
        lambda: any(
            e == "session.rejected" and f.get("user") == "sftp-strict" for e, f in rnode.events
        )
    )
    rejected = next(
        f for e, f in rnode.events if e == "session.rejected" and f["user"] == "sftp-strict"
    )
    assert rejected["kind"] == "sftp" and rejected["reason"] == SFTP_UNDER_STRICT
    # What the refusal suggests works, and is recorded: scp -O runs `scp -t` as a command.
    source = tmp_path / "copied.txt"
    source.write_text("copied over a recorded command\n")
    copier = make_creds("scp-o-strict", (ALICE,), ("strict",))
    argv = rnode.ssh(copier, f"{ALICE}@127.0.0.1")
    scp = ["scp", "-O", "-P", str(rnode.port), *argv[3:-1], str(source), f"{argv[-1]}:"]
    copied = subprocess.run(scp, capture_output=True, timeout=30)
    assert copied.returncode == 0, copied.stderr
    rnode.wait(lambda: any(b"scp-o-strict" in data for data, _ in rnode.uploads.values()))
    reader, _ = rnode.upload_for("scp-o-strict")
    assert (reader.header.kind, reader.header.command) == ("exec", "scp -t .")
    assert not any(b"sftp-relaxed" in data for data, _ in list(rnode.uploads.values()))


def test_best_effort_records_shells_but_not_plain_exec(
    rnode: RecordingNode, make_creds: CredsFactory
) -> None:
    creds = make_creds("exec-plain", (ALICE,))
    result = subprocess.run(
        rnode.ssh(creds, f"{ALICE}@127.0.0.1", "echo not-recorded"), capture_output=True, timeout=30
    )
    assert result.returncode == 0
    # Nor a shell without a pty.
    result = subprocess.run(
        rnode.ssh(creds, "-T", f"{ALICE}@127.0.0.1"),
        input=b"echo not-recorded-shell\n",
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0 and b"not-recorded-shell" in result.stdout
    # With a pty the same command is a terminal session: recorded. Its upload, which comes
    # after the plain exec ended, is also the sign that a recording of that exec would be here.
    result = subprocess.run(
        rnode.ssh(creds, "-tt", f"{ALICE}@127.0.0.1", "echo pty-recorded"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0
    rnode.wait(lambda: any(b"pty-recorded" in data for data, _ in rnode.uploads.values()))
    mine = [data for data, _ in list(rnode.uploads.values()) if b"exec-plain" in data]
    assert len(mine) == 1 and b"not-recorded" not in mine[0]


def test_role_with_recording_off_is_not_recorded(
    rnode: RecordingNode, make_creds: CredsFactory
) -> None:
    creds = make_creds("rec-off", (ALICE,), ("off",))
    result = subprocess.run(
        rnode.ssh(creds, "-tt", f"{ALICE}@127.0.0.1", "echo quiet"), capture_output=True, timeout=30
    )
    assert result.returncode == 0
    # Control: a recorded session that starts after the quiet one ended does get uploaded.
    control = make_creds("loud-control", (ALICE,))
    result = subprocess.run(
        rnode.ssh(control, "-tt", f"{ALICE}@127.0.0.1", "echo loud"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0
    rnode.wait(lambda: any(b"loud-control" in data for data, _ in rnode.uploads.values()))
    assert not any(b"rec-off" in data for data, _ in list(rnode.uploads.values()))


def test_strict_session_is_refused_when_its_recording_cannot_be_created(
    rnode: RecordingNode, make_creds: CredsFactory
) -> None:
    live = rnode.recordings.directory.path
    moved = live.with_name("recordings-away")
    live.rename(moved)
    live.write_text("a file where the directory should be")
    try:
        strict = make_creds("refused-strict", (ALICE,), ("strict",))
        result = subprocess.run(
            rnode.ssh(strict, f"{ALICE}@127.0.0.1", "touch /tmp/cg-must-not-exist"),
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 127
        assert (
            b"cannot start session: your roles require session recording and it cannot be "
            b"written: Not a directory" in result.stderr
        )
        assert not os.path.exists("/tmp/cg-must-not-exist")  # nothing ran
        rnode.wait(
            lambda: any(
                e == "session.rejected" and f.get("user") == "refused-strict"
                for e, f in rnode.events
            )
        )
        # best_effort goes on without a recording.
        relaxed = make_creds("relaxed", (ALICE,))
        result = subprocess.run(
            rnode.ssh(relaxed, "-tt", f"{ALICE}@127.0.0.1", "echo still-works"),
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0 and b"still-works" in result.stdout
    finally:
        live.unlink()
        moved.rename(live)


def test_strict_session_ends_when_its_recording_fails(
    rnode: RecordingNode, make_creds: CredsFactory
) -> None:
    creds = make_creds("disk-full", (ALICE,), ("strict",))
    argv = rnode.ssh(creds, "-tt", f"{ALICE}@127.0.0.1")
    child = pexpect.spawn(argv[0], argv[1:], timeout=15)
    try:
        child.expect(r"[$#] ")
        child.sendline("PS1='cg-''ready> '")
        child.expect_exact(PROMPT)
        recorder = next(
            o
            for o in reversed(rnode.observers)
            if isinstance(o, SessionRecorder) and o._file.path.exists()
        )
        # The disk fills up: the recording's descriptor now points at /dev/full.
        full = os.open("/dev/full", os.O_WRONLY)
        try:
            os.dup2(full, recorder._file._fd)  # type: ignore[arg-type]
        finally:
            os.close(full)
        child.sendline("echo more output")
        child.expect("session ended: your roles require session recording and it cannot be")
        child.expect(pexpect.EOF)
    finally:
        child.close()

    def ended() -> list[dict[str, Any]]:
        return [f for e, f in rnode.events if e == "session.end" and f.get("user") == "disk-full"]

    rnode.wait(lambda: bool(ended()))
    end = ended()[0]
    assert end["reason"] == "recording failed"
    rnode.wait(lambda: recorder.session_id in rnode.uploads)
    assert rnode.uploads[recorder.session_id][1] is True  # incomplete


@pytest.fixture(autouse=True)
def _no_leftover_marker() -> Iterator[None]:
    yield
    if os.path.exists("/tmp/cg-must-not-exist"):
        os.unlink("/tmp/cg-must-not-exist")
