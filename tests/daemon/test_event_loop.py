"""Which event loop the daemon's processes run (daemon/event_loop.py)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys

import pytest
import uvloop

from certgate.daemon import event_loop
from certgate.errors import BadParameter
from certgate.proxy.tunnel import open_tunnel


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    assert event_loop.run(_loop_type()) is uvloop.Loop


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    loop_type = event_loop.run(_loop_type())
    assert issubclass(loop_type, asyncio.BaseEventLoop)
    assert loop_type is not uvloop.Loop


def test_an_unknown_loop_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The coroutine is closed, not leaked: pytest turns "never awaited" into an error.
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "trio")
    with pytest.raises(BadParameter):
        event_loop.run(_loop_type())
    gc.collect()


def test_certgate_start_refuses_an_unknown_loop_in_one_line(tmp_path: object) -> None:
    certgate = os.path.join(os.path.dirname(sys.executable), "certgate")
    env = {**os.environ, event_loop.EVENT_LOOP_ENV: "trio"}
    result = subprocess.run(
        [certgate, "start", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert event_loop.EVENT_LOOP_ENV in result.stderr


def test_the_proxys_node_relay_runs_on_uvloop() -> None:
    # uvloop's transports are not asyncio.Transport subclasses: the relay once asserted
    # they were, and every dial through the proxy failed on uvloop.
    async def relay() -> bytes:
        async def node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"SSH-2.0-node\r\n")  # a node speaks first
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(node, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            session = await open_tunnel("127.0.0.1", port, 5)
            received = bytearray()
            done = asyncio.get_running_loop().create_future()

            class Channel:
                def write(self, data: bytes) -> None:
                    received.extend(data)

                def write_eof(self) -> None:
                    if not done.done():
                        done.set_result(None)

                def close(self) -> None:
                    if not done.done():
                        done.set_result(None)

            session.connection_made(Channel())
            try:
                await asyncio.wait_for(done, 5)
            finally:
                session.connection_lost(None)  # the channel closes: so does the node's side
                await asyncio.sleep(0)
            return bytes(received)
        finally:
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(relay()) == b"SSH-2.0-node\r\n"
