"""What the node's and the agentless proxy's session channels note of a user's request."""

from __future__ import annotations

from typing import Any

from certgate.api.identity import Identity
from certgate.srv.live import LiveClient
from certgate.srv.session import SessionPolicy
from certgate.srv.session_channel import SessionChannel


class _Channel(SessionChannel):
    def __init__(self) -> None:
        client = LiveClient(
            identity=Identity(username="alice", roles=("dev",), logins=("alice",)),
            login="alice",
            target="node-1",
            client_addr="192.0.2.7:40000",
            policy=SessionPolicy(),
            audit=lambda event, fields: None,
        )
        super().__init__(client)
        self.resizes: list[tuple[int, int, int, int]] = []

    def resize_target(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.resizes.append((width, height, pixwidth, pixheight))


def test_a_pty_without_columns_or_rows_gets_80_by_24_and_keeps_what_it_has() -> None:
    blank = _Channel()
    assert blank.pty_requested("xterm", (0, 0, 0, 0), {})
    assert blank.shell_requested()
    info = blank.session_info()
    assert (info.kind, info.tty, info.term, info.term_size) == ("shell", True, "xterm", (80, 24))

    tall = _Channel()
    tall.pty_requested("vt100", (0, 50, 640, 800), None)
    assert tall.session_info().term_size == (80, 50)


def test_the_info_says_who_asked_for_what() -> None:
    channel = _Channel()
    assert channel.exec_requested("uptime")
    info = channel.session_info(node="node-1")
    assert (info.id, info.kind, info.command, info.tty, info.term_size) == (
        channel.id, "exec", "uptime", False, None,
    )  # fmt: skip
    assert (info.identity.username, info.login, info.client_addr, info.node, info.protocol) == (
        "alice", "alice", "192.0.2.7:40000", "node-1", "ssh",
    )  # fmt: skip


def test_only_a_usable_window_change_reaches_the_target() -> None:
    channel = _Channel()
    channel.pty_requested("xterm", (100, 30, 0, 0), {})
    channel.terminal_size_changed(0, 40, 0, 0)
    channel.terminal_size_changed(120, 0, 0, 0)
    assert channel.resizes == []
    channel.terminal_size_changed(120, 40, 960, 640)
    assert channel.resizes == [(120, 40, 960, 640)]
    channel.shell_requested()
    assert channel.session_info().term_size == (120, 40)


def test_writing_to_a_closing_channel_is_not_an_error() -> None:
    class Closing:
        def write(self, data: Any) -> None:
            raise BrokenPipeError

        def write_stderr(self, data: Any) -> None:
            raise BrokenPipeError

        def set_write_buffer_limits(self, high: int) -> None:
            pass

    channel = _Channel()
    channel.connection_made(Closing())
    channel.write(b"locked\r\n", stderr=True)
    channel.write(b"bye", stderr=False)
