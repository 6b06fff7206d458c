"""The node's spawn helper (node/spawner.py, node/spawn_server.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest

from certgate.node.session import lookup_account, spawn
from certgate.node.spawner import UNKNOWN_RETURNCODE, ChildSpec, Spawner, SpawnerGone
from tests.support.unix import ensure_user

LOGIN = "cgspawn"


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    helper = Spawner()
    helper.start()
    try:
        yield helper
    finally:
        helper.close()


def _run(spawner: Spawner, script: str) -> tuple[int, str, int]:
    """(pid, stdout, returncode) of `sh -c script` started by the helper."""
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        env = {"PATH": "/usr/bin:/bin"}
        stdio = (null, out_w, null)
        child = spawner.spawn(
            ChildSpec("/bin/sh", ["sh", "-c", script], env, "/", None, stdio, False)
        )
    finally:
        os.close(out_w)
        os.close(null)
    with os.fdopen(out_r) as output:
        text = output.read()
    returncode = child.wait(timeout=10)
    if child.pidfd is not None:
        os.close(child.pidfd)
    return child.pid, text, returncode


def test_the_helper_starts_the_child_and_reports_its_exit(spawner: Spawner) -> None:
    assert spawner._process is not None
    pid, output, returncode = _run(spawner, "echo $PPID $$; exit 3")
    parent, own = (int(v) for v in output.split())
    assert own == pid
    assert parent == spawner._process.pid  # not this (large) process: it did not fork
    assert returncode == 3


def test_a_child_ended_by_a_signal_says_so_as_subprocess_does(spawner: Spawner) -> None:
    _, _, returncode = _run(spawner, "kill -TERM $$")
    assert returncode == -signal.SIGTERM


def test_a_child_that_cannot_run_is_an_oserror_as_from_subprocess(spawner: Spawner) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        with pytest.raises(FileNotFoundError):
            spawner.spawn(ChildSpec("/nonexistent/shell", ["x"], {}, "/", None, (null,) * 3, False))
    finally:
        os.close(null)
    assert _run(spawner, "exit 0")[2] == 0  # and the helper goes on


def test_the_child_runs_in_its_own_session(spawner: Spawner) -> None:
    pid, output, _ = _run(spawner, "ps -o sid= -p $$")
    assert int(output) == pid


def test_a_dead_helper_is_said_aloud_and_its_children_end_unknown(spawner: Spawner) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        child = spawner.spawn(
            ChildSpec("/bin/sh", ["sh", "-c", "sleep 30"], {}, "/", None, (null,) * 3, False)
        )
    finally:
        os.close(null)
    assert spawner._process is not None
    spawner._process.kill()
    spawner._process.wait()
    assert child.wait(timeout=10) == UNKNOWN_RETURNCODE
    os.kill(child.pid, signal.SIGKILL)
    if child.pidfd is not None:
        os.close(child.pidfd)
    with pytest.raises(SpawnerGone):
        spawner.spawn(ChildSpec("/bin/true", ["true"], {}, "/", None, (0, 1, 2), False))


class _Collect:
    def __init__(self) -> None:
        self.received = bytearray()
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def output(self, data: bytes, stderr: bool) -> None:
        self.received.extend(data)

    def stdin_drained(self) -> None:
        pass

    def exited(self, returncode: int) -> None:
        self.done.set_result(returncode)


@pytest.mark.parametrize("helper", ["running", "gone"])
async def test_a_session_runs_as_its_login_with_or_without_the_helper(helper: str) -> None:
    # Gone: the node forks itself, as before the helper existed; the session is the same.
    ensure_user(LOGIN)
    account = lookup_account(LOGIN)
    spawner = Spawner()
    spawner.start()
    assert spawner._process is not None
    helper_pid = spawner._process.pid
    if helper == "gone":
        spawner._process.kill()
        spawner._process.wait()
    try:
        sink = _Collect()
        child = spawn(
            account, "/bin/sh", ["sh", "-c", "echo $(id -u) $(id -G) $PPID $(tty); exit 7"],
            {"PATH": "/usr/bin:/bin"}, sink, pty_size=(80, 24, 0, 0), spawner=spawner,
        )  # fmt: skip
        assert await asyncio.wait_for(sink.done, 10) == 7
        child.close()
    finally:
        spawner.close()
    uid, *rest = bytes(sink.received).decode().split()
    groups, parent, tty = rest[:-2], int(rest[-2]), rest[-1]
    assert int(uid) == account.uid
    assert sorted(int(g) for g in groups) == sorted(set(account.groups))
    assert tty.startswith("/dev/pts/")
    assert (parent == helper_pid) == (helper == "running")


def test_the_child_starts_with_no_signal_ignored(spawner: Spawner) -> None:
    # Python ignores SIGPIPE (and SIGXFSZ) and exec keeps that: a shell started so would
    # pass it on, and `yes | head -1` would never end. Only these bits: what the test
    # runner inherited itself (a real-time signal under make, once) is not the helper's.
    _, output, _ = _run(spawner, "grep SigIgn /proc/$$/status")
    label, mask = output.split()
    assert label == "SigIgn:"
    for signum in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        assert not int(mask, 16) & (1 << (signum - 1)), signum.name


def test_the_helper_ends_when_the_node_goes(spawner: Spawner) -> None:
    # A node killed with SIGKILL closes nothing itself: the kernel closes its end of the
    # socket, which is all the helper waits for. No helper outlives its node.
    process, sock = spawner._process, spawner._sock
    assert process is not None and sock is not None
    assert process.poll() is None
    sock.close()
    assert process.wait(timeout=10) == 0


def test_the_helper_ends_quietly_when_the_node_dies_with_its_news_unread(
    spawner: Spawner, capfd: pytest.CaptureFixture[str]
) -> None:
    # A node killed while the helper's "child exited" message waits unread: the kernel
    # resets the socket rather than closing it, and the helper printed a traceback.
    process, sock = spawner._process, spawner._sock
    assert process is not None and sock is not None
    null = os.open(os.devnull, os.O_RDWR)
    try:
        spawner.spawn(ChildSpec("/bin/true", ["true"], {}, "/", None, (null, null, null), False))
    finally:
        os.close(null)
    time.sleep(0.5)  # the child has exited, and the helper said so to nobody
    sock.close()
    assert process.wait(timeout=10) == 0
    assert "Traceback" not in capfd.readouterr().err
