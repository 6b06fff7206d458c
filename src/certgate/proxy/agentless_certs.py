"""The certificates the proxy needs from auth to terminate SSH for agentless nodes.

    host_cert(node, key)                      the proxy's host certificate for a node's
                                              name; kept until half its life is gone
    onward_cert(presented, login, node, key)  a user certificate for the proxy's key,
                                              one login, one minute; kept for a few
                                              seconds so a burst of connections of one
                                              user to one node asks auth once

Auth decides what it signs (auth/agentless.py); this module only asks and remembers.
Concurrent asks for the same certificate share one request.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from certgate.rpc.auth_client import AsyncAuthClient

# An onward certificate is reused while it has at least this long left.
ONWARD_MARGIN = timedelta(seconds=40)
# The most certificates kept (the oldest go first).
CACHE_SIZE = 4096


@dataclass(frozen=True)
class Signed:
    certificate: str
    expires: datetime


class AgentlessCertSource(Protocol):
    async def host_cert(self, node: str, public_key: str) -> Signed: ...

    async def onward_cert(self, presented: str, login: str, node: str, public_key: str) -> Signed:
        """AccessDenied if auth refuses; ConnectionProblem if it cannot be reached."""


class AuthAgentlessCerts:
    """An AgentlessCertSource that asks auth over its API, with caches."""

    def __init__(self, auth: AsyncAuthClient, now: Callable[[], datetime] | None = None) -> None:
        self._auth = auth
        self._now = now or (lambda: datetime.now(UTC))
        self._host = _Cache(self._now)
        self._onward = _Cache(self._now)

    async def host_cert(self, node: str, public_key: str) -> Signed:
        async def ask() -> Signed:
            answer = await self._auth.call(
                "POST",
                "/v1/agentless/proxy-host-certs",
                json={"node": node, "public_key": public_key},
            )
            return _signed(answer)

        def fresh(signed: Signed, issued: datetime) -> bool:
            return self._now() < issued + (signed.expires - issued) / 2

        return await self._host.get((node, public_key), ask, fresh)

    async def onward_cert(self, presented: str, login: str, node: str, public_key: str) -> Signed:
        async def ask() -> Signed:
            answer = await self._auth.call(
                "POST",
                "/v1/agentless/onward-user-certs",
                json={
                    "certificate": presented,
                    "login": login,
                    "node": node,
                    "public_key": public_key,
                },
            )
            return _signed(answer)

        def fresh(signed: Signed, issued: datetime) -> bool:
            return self._now() + ONWARD_MARGIN < signed.expires

        digest = hashlib.sha256(presented.encode()).hexdigest()
        return await self._onward.get((digest, login, node, public_key), ask, fresh)

    def forget_node(self, node: str) -> None:
        """Drop what was signed for `node` (it was deleted or changed)."""
        self._host.drop(lambda key: key[0] == node)
        self._onward.drop(lambda key: key[2] == node)


class _Cache:
    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self._items: dict[tuple[str, ...], tuple[Signed, datetime]] = {}
        self._asking: dict[tuple[str, ...], asyncio.Future[Signed]] = {}

    async def get(
        self,
        key: tuple[str, ...],
        ask: Callable[[], Awaitable[Signed]],
        fresh: Callable[[Signed, datetime], bool],
    ) -> Signed:
        held = self._items.get(key)
        if held is not None and fresh(*held):
            return held[0]
        pending = self._asking.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Signed] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            issued = self._now()
            signed = await ask()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._asking.pop(key, None)
        future.set_result(signed)
        if len(self._items) >= CACHE_SIZE:
            del self._items[next(iter(self._items))]
        self._items[key] = (signed, issued)
        return signed

    def drop(self, match: Callable[[tuple[str, ...]], bool]) -> None:
        for key in [key for key in self._items if match(key)]:
            del self._items[key]


def _signed(answer: object) -> Signed:
    assert isinstance(answer, dict)
    return Signed(str(answer["certificate"]), datetime.fromisoformat(str(answer["expires"])))
