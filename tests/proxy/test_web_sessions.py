"""Web sessions idle out after IDLE_TIMEOUT without use; typing in a web terminal is use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from certgate.proxy.webui.sessions import IDLE_TIMEOUT, WebSessions
from certgate.proxy.webui.terminal import handle_message


class _Auth:
    async def call(self, method: str, path: str, **kw: Any) -> Any:
        expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        return {
            "identity": {"username": "ann", "expires": expires}, "ssh_cert": "",
            "tls_cert": "", "tls_cas": [], "known_hosts": "", "user_ca_keys": [],
        }  # fmt: skip


async def test_terminal_use_keeps_the_session_and_idleness_ends_it() -> None:
    now = [1000.0]
    sessions = WebSessions(_Auth(), clock=lambda: now[0])  # type: ignore[arg-type]
    cookie, session = await sessions.log_in("ann", "pw", "123456", "127.0.0.1")
    ended: list[str] = []
    session.on_end.append(ended.append)  # an open terminal

    # No page is loaded for an hour, but the user types in the terminal all along.
    for _ in range(6):
        now[0] += IDLE_TIMEOUT / 3
        sessions.touch(session)
        assert sessions.sweep() == 0
    assert sessions.find(cookie) is session and not ended

    # Then nothing at all for longer than the timeout: ended, and its terminal told.
    now[0] += IDLE_TIMEOUT + 1
    assert sessions.sweep() == 1
    assert ended == ["your web session ended after being idle"]
    assert sessions.find(cookie) is None


class _Shell:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.sizes: list[tuple[int, int]] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def resize(self, cols: int, rows: int) -> None:
        self.sizes.append((cols, rows))


def test_only_keystrokes_count_as_use_not_the_pages_pings() -> None:
    """The terminal page pings every 20 s: were that use, a tab left open with a root
    shell would never idle out."""
    shell = _Shell()
    assert handle_message(shell, '{"type": "input", "data": "ls\\r"}')
    assert not handle_message(shell, '{"type": "ping"}')
    assert not handle_message(shell, '{"type": "resize", "cols": 100, "rows": 30}')
    assert not handle_message(shell, "not json")
    assert shell.written == [b"ls\r"] and shell.sizes == [(100, 30)]
