"""An auditor replays any session from the terminal (issue 4, DESIGN §5).

Real processes throughout: `certgate start` with auth, proxy and node; `cgsh ssh` in a
real terminal (pexpect); `cgsh recordings ls`, `cgsh play`, `cgctl audit ls`. The crash
test kills the certgate process with SIGKILL in the middle of a session and starts it
again on the same data dir.
"""

from __future__ import annotations

import io
import json
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from certgate.client.recordings import format_seconds
from tests.support.cluster import BIN, Cluster, User
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sessions as root need root")

STRICT = """\
kind: role
metadata: {name: recorded}
spec:
  allow:
    logins: [root]
    node_labels: {"*": "*"}
  options: {record_session: {ssh: strict}}
"""


def terminal(cluster: Cluster, user: User, *args: str) -> pexpect.spawn:
    """`cgsh ssh ARGS` in a real 100x30 terminal; `.logfile_read` keeps what it showed."""
    child = pexpect.spawn(
        str(BIN / "cgsh"),
        ["ssh", *args],
        env={**os.environ, "CERTGATE_HOME": str(user.home), "TERM": "xterm-256color"},
        dimensions=(30, 100),
        timeout=20,
    )
    child.logfile_read = io.BytesIO()
    return child


def recordings(cluster: Cluster, user: User, *args: str) -> list[dict[str, Any]]:
    out = cluster.cgsh(user, "recordings", "ls", "--format=json", *args).stdout
    return list(json.loads(out))


def recording_of(cluster: Cluster, user: User, session_user: str) -> dict[str, Any]:
    return dict(
        eventually(
            lambda: next((r for r in recordings(cluster, user) if r["user"] == session_user), None)
        )
    )


def play_json(cluster: Cluster, user: User, recording_id: str) -> dict[str, Any]:
    return dict(json.loads(cluster.cgsh(user, "play", recording_id, "--format=json").stdout))


def shown(document: dict[str, Any]) -> str:
    return "".join(e["data"] for e in document["events"] if e["type"] == "o")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("recordings"), roles="auth,proxy,node")
    c.start()
    c.cgctl("create", "-f", "-", input=STRICT)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def alice(cluster: Cluster) -> User:
    user = cluster.add_user("alice", roles="access", logins="root")
    cluster.login(user)
    return user


@pytest.fixture(scope="module")
def bob(cluster: Cluster) -> User:
    """An auditor (a `session` list/read rule) whose own sessions must be recorded."""
    user = cluster.add_user("bob", roles="recorded,auditor")
    cluster.login(user)
    return user


@pytest.fixture(scope="module")
def alice_session(cluster: Cluster, alice: User) -> dict[str, Any]:
    """Alice types into a real terminal, resizes it and leaves; what it showed."""
    started = datetime.now(UTC)
    child = terminal(cluster, alice, "-t", "root@node-1")
    try:
        child.expect(r"[#$] ")
        child.sendline("PS1='rec''> '; echo typed-$((6*7)) héllo ✓")
        child.expect_exact("typed-42 héllo ✓".encode())
        child.expect_exact(b"rec> ")
        child.setwinsize(40, 120)

        def pty_size() -> bytes:  # SIGWINCH -> ssh -> window-change -> the node, read back
            child.sendline("stty size")
            child.expect(rb"(\d+ \d+)\r\n")
            size: bytes = child.match.group(1)
            child.expect_exact(b"rec> ")
            return size

        eventually(lambda: pty_size() == b"40 120")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return {
        "shown": child.logfile_read.getvalue().decode(),
        "started": started,
        "ended": datetime.now(UTC),
    }


def test_replay_contains_exactly_what_the_terminal_showed(
    cluster: Cluster, alice: User, alice_session: dict[str, Any]
) -> None:
    info = recording_of(cluster, alice, "alice")
    assert (info["login"], info["node"], info["session_kind"]) == ("root", "node-1", "shell")
    assert info["incomplete"] is False and info["duration"] > 0.2

    document = play_json(cluster, alice, info["id"])
    assert document["damage"] is None
    assert (document["header"]["width"], document["header"]["height"]) == (100, 30)
    assert document["header"]["certgate"]["user"] == "alice"
    replayed = shown(document)
    assert "typed-42 héllo ✓" in replayed and "40 120" in replayed
    # Byte for byte what reached the terminal (which also shows ssh's own messages).
    assert replayed in alice_session["shown"]
    assert "120x40" in [e["data"] for e in document["events"] if e["type"] == "r"]
    times = [e["time"] for e in document["events"]]
    assert times == sorted(times)

    # In the terminal: the same output, at (here quickened) original timing.
    played = cluster.cgsh(alice, "play", info["id"], "--speed=10")
    assert "typed-42 héllo ✓" in played.stdout and "40 120" in played.stdout


@pytest.fixture(scope="module")
def bob_exec(cluster: Cluster, bob: User) -> dict[str, Any]:
    """Bob runs a command without a terminal; his role says `record_session: strict`."""
    result = cluster.cgsh(bob, "ssh", "root@node-1", "echo bob-$((2*21)); exit 5", check=False)
    assert result.returncode == 5 and "bob-42" in result.stdout
    return recording_of(cluster, bob, "bob")


def test_strict_role_records_exec_commands(
    cluster: Cluster, bob: User, bob_exec: dict[str, Any]
) -> None:
    assert bob_exec["session_kind"] == "exec"
    assert bob_exec["command"] == "echo bob-$((2*21)); exit 5"
    assert "bob-42" in shown(play_json(cluster, bob, bob_exec["id"]))


def test_a_user_plays_their_own_recordings_but_not_others(
    cluster: Cluster,
    alice: User,
    bob: User,
    alice_session: dict[str, Any],
    bob_exec: dict[str, Any],
) -> None:
    alices = recording_of(cluster, alice, "alice")

    # Without a "session" rule: only one's own, listed and played.
    assert {r["user"] for r in recordings(cluster, alice)} == {"alice"}
    # Answered as a recording that does not exist: whose it is is not alice's to learn.
    refused = cluster.cgsh(alice, "play", bob_exec["id"], check=False)
    assert refused.returncode == 4
    assert f'recording "{bob_exec["id"]}" not found' in refused.stderr
    assert "bob" not in refused.stderr
    listed = cluster.cgsh(alice, "recordings", "ls", "--user=bob", check=False)
    assert listed.returncode == 3 and "access denied" in listed.stderr

    # The auditor role has the rule: everyone's, filtered by user and node.
    assert {bob_exec["id"], alices["id"]} <= {r["id"] for r in recordings(cluster, bob)}
    assert [r["id"] for r in recordings(cluster, bob, "--user=alice")] == [alices["id"]]
    assert recordings(cluster, bob, "--node=elsewhere") == []
    assert "typed-42" in shown(play_json(cluster, bob, alices["id"]))
    # That playback is audited, once; alice's refused attempt fetched nothing.
    out = cluster.cgctl("audit", "ls", "--event=session.recording.access", "--format=json").stdout
    accesses = [(e["user"], e["session_id"], e["session_user"]) for e in json.loads(out)]
    assert [a for a in accesses if a[0] == "bob" and a[1] == alices["id"]] == [
        ("bob", alices["id"], "alice")
    ]
    assert not [a for a in accesses if a[0] == "alice" and a[1] == bob_exec["id"]]
    table = cluster.cgsh(bob, "recordings", "ls", "--since=1h").stdout
    assert bob_exec["id"] in table and alices["id"] in table


def test_unknown_or_malformed_ids_are_not_found(cluster: Cluster, alice: User) -> None:
    for bad in ("x", "../../etc/passwd", "00000000-0000-4000-8000-000000000000"):
        result = cluster.cgsh(alice, "play", bad, check=False)
        assert result.returncode == 4, result.stderr
        assert f'recording "{bad}" not found' in result.stderr


def test_audit_finds_the_session_by_user_node_and_time(
    cluster: Cluster, alice: User, alice_session: dict[str, Any]
) -> None:
    info = recording_of(cluster, alice, "alice")
    since = (alice_session["started"] - timedelta(seconds=1)).isoformat()
    until = (alice_session["ended"] + timedelta(seconds=5)).isoformat()

    def search(*extra: str) -> list[dict[str, Any]]:
        out = cluster.cgctl(
            "audit", "ls", "--user=alice", "--node=node-1", f"--since={since}",
            f"--until={until}", "--format=json", *extra,
        ).stdout  # fmt: skip
        return list(json.loads(out))

    kinds = {"session.start", "session.end", "session.upload"}

    def found() -> list[dict[str, Any]] | None:
        events = [
            e for e in search(f"--event={','.join(kinds)}") if e.get("session_id") == info["id"]
        ]
        return events if {e["event"] for e in events} == kinds else None

    events = eventually(found)
    assert all(e["user"] == "alice" and e["node"] == "node-1" for e in events)
    assert search("--until=" + since) == []

    # Paging: one event a page, the next page from the printed cursor.
    first = cluster.cgctl(
        "audit", "ls", "--user=alice", "--node=node-1", "--limit=1", "--format=json"
    )
    assert "more events:" in first.stderr and "--cursor=" in first.stderr
    cursor = first.stderr.split("--cursor=")[1].split()[0]
    second = cluster.cgctl(
        "audit", "ls", "--user=alice", "--node=node-1", "--limit=1", "--format=json",
        f"--cursor={cursor}",
    )  # fmt: skip
    (a,) = json.loads(first.stdout)
    (b,) = json.loads(second.stdout)
    assert a["uid"] != b["uid"] and b["time"] <= a["time"]


def test_the_listed_duration_is_the_sessions_even_when_it_ends_idle(cluster: Cluster) -> None:
    carol = cluster.add_user("carol", roles="access", logins="root")
    cluster.login(carol)
    idle = 3.0
    child = terminal(cluster, carol, "-t", "root@node-1", f"echo idle-from-here; sleep {idle}")
    try:
        child.expect_exact(b"idle-from-here")
        child.expect(pexpect.EOF)  # nothing more is shown: the session sits idle, then exits
    finally:
        child.close()
    info = recording_of(cluster, carol, "carol")

    def session_end() -> dict[str, Any] | None:
        out = cluster.cgctl(
            "audit", "ls", "--event=session.end", "--user=carol", "--format=json"
        ).stdout
        return next((e for e in json.loads(out) if e.get("session_id") == info["id"]), None)

    end = eventually(session_end)
    assert end["duration"] >= idle
    # The list agrees with session.end, idle tail included (it used to stop at the
    # last output, about `idle` seconds short)...
    assert abs(info["duration"] - end["duration"]) < 1.0, (info, end)
    listed = cluster.cgsh(carol, "recordings", "ls").stdout
    assert format_seconds(info["duration"]) in listed
    # ...because the recording itself ends when the session did.
    events = play_json(cluster, carol, info["id"])["events"]
    assert events[-1]["type"] == "m"
    assert events[-1]["time"] == pytest.approx(info["duration"], abs=0.001)
    assert events[-2]["time"] < info["duration"] - idle / 2


def test_kill_9_mid_session_loses_nothing_written(cluster: Cluster, alice: User) -> None:
    # Last in this module: it kills the module's cluster (and starts it again).
    child = terminal(cluster, alice, "-t", "root@node-1")
    child.expect(r"[#$] ")
    child.sendline("echo before-the-$((6*7))-crash")
    child.expect_exact(b"before-the-42-crash")
    live = cluster.data_dir / "node" / "recordings"

    def written() -> str | None:
        return next(
            (p.stem for p in live.glob("*.cast") if b"before-the-42-crash" in p.read_bytes()),
            None,
        )

    session_id = eventually(written, timeout=30)  # on disk while the session is live
    assert cluster.process is not None
    cluster.process.send_signal(signal.SIGKILL)
    cluster.process.wait(10)
    child.expect(pexpect.EOF)
    child.close()

    cluster.start()  # the same data dir: the node finds the cut-off recording and sends it
    info = eventually(
        lambda: next((r for r in recordings(cluster, alice) if r["id"] == session_id), None)
    )
    assert info["incomplete"] is True
    assert "before-the-42-crash" in shown(play_json(cluster, alice, session_id))
    assert "(incomplete)" in cluster.cgsh(alice, "recordings", "ls").stdout
    eventually(lambda: not list(live.glob("*.cast")), timeout=30)  # deleted once auth has it


def test_an_escape_sequence_in_a_command_never_reaches_the_readers_terminal(
    cluster: Cluster, bob: User
) -> None:
    """A command carries what the user typed into the listings an admin reads; an OSC 52
    in it would set the admin's clipboard, a cursor move would rewrite the rows above."""
    command = "true '\x1b[1A\x1b[2K\x1b]52;c;cGF3bmVk\x07'"
    assert cluster.cgsh(bob, "ssh", "root@node-1", command).returncode == 0
    eventually(lambda: any(r.get("command") == command for r in recordings(cluster, bob)))
    listings = [
        cluster.cgsh(bob, "recordings", "ls", "--user=bob").stdout,
        cluster.cgctl("audit", "ls", "--user=bob", "--event=exec").stdout,
    ]
    for listing in listings:
        assert "\x1b" not in listing and "\x07" not in listing
        assert "true '\\x1b[1A\\x1b[2K\\x1b]52;c;cGF3bmVk\\x07'" in listing


def test_play_keeps_the_clipboard_of_whoever_replays_it_out_of_the_users_reach(
    cluster: Cluster, bob: User
) -> None:
    """Bob's session printed an OSC 52 (set the clipboard to a command of his choice);
    an auditor replaying it must not get it pasted into their shell."""
    command = r"printf 'before\033]52;c;Y3VybCBldmls\007after\n'"
    assert cluster.cgsh(bob, "ssh", "root@node-1", command).returncode == 0
    recording = eventually(
        lambda: next((r for r in recordings(cluster, bob) if r.get("command") == command), None)
    )
    played = cluster.cgsh(bob, "play", recording["id"], "--speed=100").stdout
    assert "beforeafter" in played and "\x1b]52" not in played
    raw = cluster.cgsh(bob, "play", recording["id"], "--speed=100", "--raw").stdout
    assert "before\x1b]52;c;Y3VybCBldmls\x07after" in raw
