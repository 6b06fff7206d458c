"""Ending a user's connection with words first: what a lock or an admin does.

The node's SSH server and the proxy (for agentless nodes) end a connection the same
way: every session and every joined view on it gets the message, then the connection
closes once those words had a chance to leave (bounded, so a client that reads nothing
cannot hold it open).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

# How long a hang-up waits for a client to take the message before closing anyway.
TERMINATE_FLUSH_SECONDS = 2.0


class Ending(Protocol):
    def wait_closed(self) -> Awaitable[None]: ...


class Session(Ending, Protocol):
    def terminate(self, message: str, reason: str, audit_fields: dict[str, Any]) -> None: ...


class JoinedView(Ending, Protocol):
    def finish(self, message: str, status: int = 0) -> None: ...


def end_all(
    sessions: Iterable[Session],
    joined: Iterable[JoinedView],
    message: str,
    reason: str,
    audit_fields: dict[str, Any],
) -> int:
    """Show `message` in every session and joined view and end them; how many sessions."""
    ended = list(sessions)
    for session in ended:
        session.terminate(message, reason, audit_fields)
    for view in list(joined):
        view.finish(message)
    return len(ended)


async def wait_for_last_words(closing: Iterable[Ending]) -> None:
    waits = [item.wait_closed() for item in closing]
    if waits:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TERMINATE_FLUSH_SECONDS):
                await asyncio.gather(*waits)


async def close_connection(conn: Any) -> None:
    """Close an asyncssh connection and wait (bounded) until it is closed."""
    if conn is None:
        return
    conn.close()
    await connection_closed(conn)


async def connection_closed(conn: Any) -> None:
    """Wait (bounded) until an asyncssh connection closing already is closed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TERMINATE_FLUSH_SECONDS):
            await conn.wait_closed()
