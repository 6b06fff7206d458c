"""Web sessions idle out after IDLE_TIMEOUT without use; typing in a web terminal is use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from certgate.proxy.webui.sessions import IDLE_TIMEOUT, WebSessions


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
