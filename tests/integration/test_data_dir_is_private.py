"""Another local user cannot read the data dir or the audit log (user names, client
addresses, command lines): the data dir is 0700 and events.log 0600, and a data dir
left looser by an older version is tightened at start, with a line in the log."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.support.cluster import Cluster
from tests.support.wait import eventually


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_data_dir_and_audit_log_are_owner_only(workdir: Path) -> None:
    cluster = Cluster(workdir)
    cluster.start()
    try:
        events = cluster.data_dir / "log" / "events.log"
        # The first admin's user.create, an invite: the log is written by now or soon.
        cluster.add_user("modes-alice", logins="alice")
        eventually(lambda: events.exists() and events.stat().st_size > 0)
        assert _mode(cluster.data_dir) == 0o700
        assert _mode(events.parent) == 0o700
        assert _mode(events) == 0o600
        assert "modes-alice" in events.read_text()
    finally:
        cluster.stop()


def test_a_data_dir_left_readable_is_tightened_and_said_so(workdir: Path) -> None:
    cluster = Cluster(workdir)
    events = cluster.data_dir / "log" / "events.log"
    events.parent.mkdir(parents=True)
    events.write_text("")
    cluster.data_dir.chmod(0o755)
    events.parent.chmod(0o755)
    events.chmod(0o644)
    # What another local user could read before the start: everything.
    assert _mode(cluster.data_dir) & stat.S_IROTH and _mode(events) & stat.S_IROTH
    cluster.start()
    try:
        assert _mode(cluster.data_dir) == 0o700
        assert _mode(events.parent) == 0o700
        assert _mode(events) == 0o600
        log = cluster.log.read_text()
        assert f"{cluster.data_dir} was readable by others (mode 0755): tightened to 0700" in log
        assert f"{events} was readable by others (mode 0644): tightened to 0600" in log
    finally:
        cluster.stop()
