"""A loopback TCP relay a test can cut: the network between a service and its database.

    with TcpRelay(target_port) as relay:    # listens on 127.0.0.1:relay.port
        ... connect the service to relay.port ...
        relay.cut()     # every relayed connection is dropped, new ones are closed at once
        relay.heal()    # new connections are relayed again

It runs its own event loop in a thread, so synchronous and asyncio tests use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class TcpRelay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-relay", daemon=True
        )
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.port = 0

    def __enter__(self) -> TcpRelay:
        self._thread.start()
        self._server = self._call(self._listen())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cut()
        self._server.close()
        self._call(self._server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def cut(self) -> None:
        """Drop every relayed connection; close new ones as they come, until heal()."""
        self._call(self._drop_all())

    def heal(self) -> None:
        self._cut = False

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _drop_all(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            far_reader, far_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, far_writer))
        await asyncio.gather(
            _pipe(reader, far_writer), _pipe(far_reader, writer), return_exceptions=True
        )
        for end in (writer, far_writer):
            self._writers.discard(end)
            end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
