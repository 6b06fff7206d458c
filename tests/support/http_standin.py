"""Running an aiohttp stand-in server in its own thread, for tests that drive real
processes synchronously (the plugin under test is a subprocess that calls it)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.net import free_port


@dataclass(frozen=True)
class Call:
    """One request a stand-in received (and answered successfully or not)."""

    method: str  # the API method or "VERB /path"
    body: Any
    headers: dict[str, str]
    status: int


class ThreadedServer:
    """Serves `app` on 127.0.0.1:<free port> until `stop()`."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(10), "stand-in did not start"

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._runner = web.AppRunner(self._app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(start())
        self._started.set()
        self._loop.run_forever()
