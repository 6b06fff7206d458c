"""A hung-up session's job (node/session.py `ChildProcess.terminate`): it gets SIGHUP and
from then on runs at the lowest priority, so a lock that hangs up a thousand shells at
once leaves the CPU to the servers still cutting connections."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from certgate.node.session import HUNG_UP_NICE, lookup_account, spawn
from tests.support.unix import ensure_user
from tests.support.wait import eventually_async

LOGIN = "cghangup"
# A job that outlives its hang-up for a while (it ignores SIGHUP), with a child of its own
# in its process group; it prints that child's pid, then waits.
JOB = "trap '' HUP; sleep 60 & echo $!; wait"


class _Collect:
    def __init__(self) -> None:
        self.received = bytearray()

    def output(self, data: bytes, stderr: bool) -> None:
        self.received.extend(data)

    def stdin_drained(self) -> None:
        pass

    def exited(self, returncode: int) -> None:
        pass


def nice(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat: the first two (pid, comm) are cut off


async def test_a_hung_up_job_runs_at_the_lowest_priority() -> None:
    ensure_user(LOGIN)
    sink = _Collect()
    child = spawn(lookup_account(LOGIN), "/bin/sh", ["sh", "-c", JOB], {"PATH": "/bin"}, sink)
    try:

        def grandchild() -> int:
            line = bytes(sink.received).decode().strip()
            return int(line) if line else 0

        sleeper = await eventually_async(grandchild, timeout=10)
        # Running, they have the priority the node gave them, which this would show.
        assert nice(child.pid) == nice(sleeper) == os.getpriority(os.PRIO_PROCESS, 0)
        assert HUNG_UP_NICE != os.getpriority(os.PRIO_PROCESS, 0)
        # The job is a session, and so (with autogroups) a scheduling group of its own.
        autogroup = Path(f"/proc/{child.pid}/autogroup")
        grouped = autogroup.exists()
        if grouped:
            assert autogroup.read_text().split()[-1] != str(HUNG_UP_NICE)

        child.terminate()

        assert nice(child.pid) == HUNG_UP_NICE
        assert nice(sleeper) == HUNG_UP_NICE  # the whole job, as the signals
        if grouped:  # nice alone would not count against other sessions' groups
            assert autogroup.read_text().split()[-1] == str(HUNG_UP_NICE)
        assert Path(f"/proc/{sleeper}").exists()  # it ignores SIGHUP; SIGKILL comes later
    finally:
        child.close()


async def test_a_frozen_job_runs_nothing_until_its_hang_up_ends_it() -> None:
    """A lock stops a session's job in the cut's own pass (node/sshd.py `stop`), and
    hangs it up later: meanwhile nothing of it runs, and the hang-up still ends it."""
    ensure_user(LOGIN)
    sink = _Collect()
    # Prints a line every 20 ms for as long as it runs.
    ticker = "while :; do echo tick; sleep 0.02; done"
    child = spawn(lookup_account(LOGIN), "/bin/sh", ["sh", "-c", ticker], {"PATH": "/bin"}, sink)
    try:
        await eventually_async(lambda: bytes(sink.received).count(b"tick") >= 3, timeout=10)
        # Running, the ticks keep coming, which the frozen job's silence is set against.
        seen = bytes(sink.received).count(b"tick")
        await eventually_async(lambda: bytes(sink.received).count(b"tick") > seen, timeout=10)

        child.freeze()

        await eventually_async(lambda: state(child.pid) == "T", timeout=10)
        await asyncio.sleep(0.1)  # a line written before the stop may still be in the pipe
        frozen = bytes(sink.received).count(b"tick")
        await asyncio.sleep(0.3)  # fifteen ticks' worth: none may come
        assert bytes(sink.received).count(b"tick") == frozen

        child.terminate()

        await eventually_async(lambda: child.returncode is not None, timeout=10)
    finally:
        child.close()


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
