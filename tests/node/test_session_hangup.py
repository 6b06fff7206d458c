"""A hung-up session's job (node/session.py `ChildProcess.terminate`): it gets SIGHUP and
from then on runs at the lowest priority, so a lock that hangs up a thousand shells at
once leaves the CPU to the servers still cutting connections."""

from __future__ import annotations

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
