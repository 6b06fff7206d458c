"""StreamJoiner without sockets: what an observer of a kube session is sent, and when it
is let go. The real path (kubectl, the proxy, `cgsh join`) is in
tests/integration/test_kube_join.py."""

from __future__ import annotations

from certgate.kube.observe import StreamJoiner
from certgate.srv.join import MAX_BEHIND_BYTES, Joiner, SessionParty


class _Transport:
    def __init__(self) -> None:
        self.backlog = 0

    def get_write_buffer_size(self) -> int:
        return self.backlog


class _Writer:
    """What asyncio.StreamWriter would have sent to the proxy."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _observer(party: SessionParty) -> tuple[StreamJoiner, _Writer]:
    writer = _Writer()
    joiner = StreamJoiner("walt", writer)  # type: ignore[arg-type]
    joiner.party = party
    party.join(joiner)
    return joiner, writer


async def test_an_observer_gets_the_recent_output_then_live_and_the_end() -> None:
    events: list[tuple[str, str]] = []
    shown = bytearray()

    def membership(event: str, member: Joiner) -> None:
        events.append((event, member.user))

    party = SessionParty(shown.extend, lambda data: None, membership)
    party.output(b"before ")
    joiner, writer = _observer(party)
    party.output(b"live")
    assert bytes(writer.sent) == b"before live"
    assert b"walt joined (observer)" in shown

    party.end()
    assert writer.sent.endswith(b"\r\ncertgate: the session has ended\r\n")
    assert writer.closed and joiner.done.is_set()
    assert events == [("session.join", "walt"), ("session.leave", "walt")]


async def test_an_observer_too_far_behind_is_dropped_not_waited_for() -> None:
    party = SessionParty(lambda data: None, lambda data: None, lambda *args: None)
    _, writer = _observer(party)
    party.output(b"kept up")
    assert writer.sent == bytearray(b"kept up")  # the observation that would show more

    writer.transport.backlog = MAX_BEHIND_BYTES + 1
    party.output(b"never sent")
    assert b"never sent" not in writer.sent
    assert b"fell too far behind" in writer.sent
    assert writer.closed and party.members == []
    # The session goes on for everyone else.
    other, other_writer = _observer(party)
    party.output(b"still running")
    assert other_writer.sent.endswith(b"still running")
    assert other in party.members
