"""events.log when the disk refuses an append (services/audit_file.py): the events the
store took reach the file once it has room, each once and whole.

The disk refuses for real: the log's path taken by a directory (every open fails), and
a file size limit (RLIMIT_FSIZE, in a child process) that cuts a write short mid-line,
as a disk that fills during the write does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certgate.backend.events_sqlite import SQLiteEventStore
from certgate.services.audit import AuditLog
from tests.support.wait import eventually_async


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    events = await SQLiteEventStore.open(tmp_path / "events.db")
    yield events
    await events.close()


def uids_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["uid"] for line in path.read_text().splitlines()]


async def test_an_event_stored_while_the_file_refused_it_reaches_the_file_once(
    tmp_path: Path, store: SQLiteEventStore
) -> None:
    log_file = tmp_path / "log" / "events.log"
    audit = AuditLog(store, log_file)
    log_file.mkdir(parents=True)  # every append now fails to open it
    event = {"event": "exec", "code": "T3002I", "time": "2030-01-01T00:00:00+00:00"}

    with pytest.raises(OSError):
        await audit.record({**event, "uid": "n1", "user": "alice"})
    stored, _ = await store.search(limit=10)
    assert [e["uid"] for e in stored] == ["n1"]  # the store took it

    log_file.rmdir()
    # The node retries; the store has it already, so it is not new there.
    await audit.record({**event, "uid": "n1", "user": "alice"})
    await audit.emit("user.login", user="bob")
    assert uids_in(log_file)[0] == "n1" and len(uids_in(log_file)) == 2
    await audit.close()


async def test_with_no_event_after_it_the_file_catches_up_on_its_own(
    tmp_path: Path, store: SQLiteEventStore
) -> None:
    log_file = tmp_path / "log" / "events.log"
    audit = AuditLog(store, log_file)
    log_file.mkdir(parents=True)
    with pytest.raises(OSError):
        await audit.emit("lock.created", user="admin", target="bob")
    log_file.rmdir()
    await eventually_async(lambda: len(uids_in(log_file)) == 1, timeout=5)
    await audit.close()


CHILD = textwrap.dedent(
    """
    import asyncio, resource, signal, sys
    from pathlib import Path
    from certgate.services.audit_file import AuditFile

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    path = Path(sys.argv[1])

    async def main():
        audit_file = AuditFile(path, retry_first=0.05)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (250, hard))
        lines = "".join(f'{{"n": {i}, "pad": "{"x" * 80}"}}\\n' for i in range(5))
        error = audit_file.append(lines)
        print(type(error).__name__, path.stat().st_size, audit_file.behind, flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
        while audit_file.behind:
            await asyncio.sleep(0.05)
        await audit_file.close()

    asyncio.run(main())
    """
)


def test_a_write_cut_short_mid_line_leaves_only_whole_lines_and_finishes_later(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "events.log"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(log_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # 250 bytes went in (two whole lines and half a third); the half was cut back.
    assert done.stdout.split() == ["OSError", "200", "300"]
    assert "cannot take 300 bytes" in done.stderr
    lines = log_file.read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2, 3, 4]
