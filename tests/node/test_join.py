"""SessionParty and JoinChannel without sockets: who sees what, who may type.

The channel under each JoinChannel is a small recorder of what asyncssh would have
sent; the real path (OpenSSH clients, a real node) is in
tests/integration/test_auditor_joins_live_session.py.
"""

from __future__ import annotations

import pytest

from certgate.srv.join import BACKLOG_BYTES, MAX_BEHIND_BYTES, JoinChannel, SessionParty


class _Channel:
    def __init__(self) -> None:
        self.sent = bytearray()
        self.exit_status: int | None = None
        self.backlog = 0

    def write(self, data: bytes) -> None:
        self.sent += data

    def exit(self, status: int) -> None:
        self.exit_status = status

    def get_write_buffer_size(self) -> int:
        return self.backlog


class _Owner:
    def __init__(self) -> None:
        self.shown = bytearray()
        self.typed = bytearray()
        self.events: list[tuple[str, str]] = []
        self.party = SessionParty(self.show, self.typed.extend, self.membership)

    def show(self, data: bytes) -> None:
        # What a session does with certgate's lines: they are output like any other.
        self.shown += data
        self.party.output(data)

    def membership(self, event: str, member: JoinChannel) -> None:
        self.events.append((event, member.user))


def _joiner(owner: _Owner, user: str, mode: str) -> tuple[JoinChannel, _Channel]:
    channel = _Channel()
    joiner = JoinChannel(user, mode, "sid", lambda: owner.party)
    joiner.connection_made(channel)
    joiner.session_started()
    return joiner, channel


@pytest.fixture
def owner() -> _Owner:
    return _Owner()


async def test_a_joiner_sees_the_recent_screen_then_live_output(owner: _Owner) -> None:
    owner.party.output(b"old " * 20000)  # more than the backlog keeps
    owner.party.output(b"$ recent\r\n")
    _, channel = _joiner(owner, "walt", "observer")
    assert b"joined session sid as observer" in channel.sent
    assert channel.sent.count(b"old ") <= BACKLOG_BYTES // 4
    assert b"$ recent\r\n" in channel.sent
    owner.party.output(b"live\r\n")
    assert channel.sent.endswith(b"live\r\n")


async def test_everyone_sees_who_joined_and_left(owner: _Owner) -> None:
    walt, walt_channel = _joiner(owner, "walt", "observer")
    _, pat_channel = _joiner(owner, "pat", "peer")
    assert b"certgate: walt joined (observer)" in owner.shown
    assert b"certgate: pat joined (peer)" in owner.shown
    assert b"certgate: pat joined (peer)" in walt_channel.sent
    walt.connection_lost(None)
    assert b"certgate: walt left" in pat_channel.sent
    assert owner.events == [
        ("session.join", "walt"),
        ("session.join", "pat"),
        ("session.leave", "walt"),
    ]
    assert [p["user"] for p in owner.party.participants()] == ["pat"]


async def test_observers_cannot_type_and_ctrl_c_leaves(owner: _Owner) -> None:
    walt, channel = _joiner(owner, "walt", "observer")
    walt.data_received(b"rm -rf /\r", None)
    assert owner.typed == b""
    walt.data_received(b"\x03", None)
    assert b"you left the session" in channel.sent
    assert channel.exit_status == 0
    assert owner.party.members == []
    assert owner.typed == b""


async def test_peers_type_into_the_session(owner: _Owner) -> None:
    pat, _ = _joiner(owner, "pat", "peer")
    pat.data_received(b"uptime\r", None)
    pat.data_received(b"\x03", None)  # a peer's Ctrl-C is the shell's, not a way out
    assert owner.typed == b"uptime\r\x03"
    assert owner.party.members == [pat]


async def test_what_a_joiner_sends_is_input_for_its_idle_timeout(owner: _Owner) -> None:
    inputs: list[str] = []

    def touched() -> None:
        inputs.append("walt")

    walt = JoinChannel("walt", "observer", "sid", lambda: owner.party, touched)
    walt.connection_made(_Channel())
    walt.session_started()
    walt.data_received(b"q", None)  # goes nowhere, but walt is there
    walt.terminal_size_changed(100, 30, 0, 0)
    assert inputs == ["walt", "walt"]
    assert owner.typed == b""


async def test_the_end_of_the_session_lets_everyone_go(owner: _Owner) -> None:
    _, walt_channel = _joiner(owner, "walt", "observer")
    _, pat_channel = _joiner(owner, "pat", "peer")
    owner.party.end()
    for channel in (walt_channel, pat_channel):
        assert b"the session has ended" in channel.sent
        assert channel.exit_status == 0
    assert owner.party.members == []
    # Nobody says "left" to a session that is over.
    assert b"left" not in owner.shown
    late_channel = _Channel()
    late = JoinChannel("late", "observer", "sid", lambda: owner.party)
    late.connection_made(late_channel)
    late.session_started()
    assert b"the session has ended" in late_channel.sent
    gone = JoinChannel("gone", "observer", "sid", lambda: None)
    gone_channel = _Channel()
    gone.connection_made(gone_channel)
    gone.session_started()
    assert gone_channel.exit_status == 1


async def test_a_joiner_that_falls_behind_is_dropped_not_waited_for(owner: _Owner) -> None:
    _, slow = _joiner(owner, "slow", "observer")
    _, fast = _joiner(owner, "fast", "observer")
    slow.backlog = MAX_BEHIND_BYTES + 1
    owner.party.output(b"more")
    assert b"fell too far behind" in slow.sent and slow.exit_status == 0
    assert b"certgate: slow left" in fast.sent
    assert fast.sent.endswith(b"more")
    assert [m.user for m in owner.party.members] == ["fast"]
