"""The CPU of one TLS-to-TLS relay, certgate's against the cheapest Python can do.

    .venv/bin/python bench/tls_relay.py [--size 256M] [--rounds 3] [--event-loop uvloop|asyncio]

What `kubectl exec -- cat` costs the proxy once the call is switched to WebSocket: every
byte decrypted from one TLS connection and encrypted into another. One relay process per
run, between a sender and a receiver in another process (blocking ssl sockets in threads,
so their CPU is not counted), all on loopback; the sender writes `--size` bytes as 64 KiB
WebSocket frames of exec's stdout channel, as the API server does. The ways, taking turns:

    splice        certgate's relay (srv/splice.py) on the event loop: asyncio's TLS
                  transports (memory BIOs), each decrypting into the other's write()
    splice+frames the same, with the tap the kube service reads exec's frames with
                  (kube/wsframes.py FrameReader; no payload copied), as for an exec
                  nobody records
    socket-bio    non-blocking ssl.SSLSocket pair pumped from the event loop's readiness
                  callbacks: OpenSSL reads and writes the sockets itself (no memory BIO,
                  no copies in and out of it): the design weighed for the kube listener
    thread        blocking ssl.SSLSocket pair in one thread, recv_into then sendall: no
                  event loop, no Python per record, the GIL released in OpenSSL and the
                  system calls. The floor of a relay written with Python's ssl.

Printed per way: the relay process's CPU seconds per run (user + system, median of
`--rounds`), the ratio to `thread`, and the receiver's MB/s. The cipher is the same for
every way (TLS 1.3, Python's choice: AES-256-GCM); `openssl speed` for it is printed
too, for what the encryption alone costs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.kube_proxy import parse_size  # noqa: E402
from certgate.kube import wsframes  # noqa: E402
from certgate.srv.splice import splice  # noqa: E402
from tests.support.tlsfiles import self_signed  # noqa: E402

WAYS = ("splice", "splice+frames", "socket-bio", "thread")
FRAME = 64 * 1024
READ = 256 * 1024


def _contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = directory / "relay.crt", directory / "relay.key"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


# the ends: a sender to the relay, a receiver behind it ------------------------------------


def _ends(directory: Path, size: int, control: Connection) -> None:
    """Receives the relay's upstream connection and sends `size` bytes into its listener,
    once per run, until told to stop; answers each run with the receiver's MB/s."""
    server_ctx, client_ctx = _contexts(directory)
    listener = socket.create_server(("127.0.0.1", 0))
    control.send(listener.getsockname()[1])
    frame = wsframes.channel_frame(wsframes.STDOUT, os.urandom(FRAME - 4))
    while (relay_port := control.recv()) is not None:
        received = [0]
        receiver = threading.Thread(target=_receive, args=(listener, server_ctx, received))
        receiver.start()
        raw = socket.create_connection(("127.0.0.1", relay_port))
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as sender:
            started = time.perf_counter()
            for _ in range(size // len(frame)):
                sender.sendall(frame)
            sender.shutdown(socket.SHUT_WR)
            receiver.join()
            took = time.perf_counter() - started
        sent = size // len(frame) * len(frame)
        control.send(
            received[0] / took / 1e6 if received[0] == sent else -float(sent - received[0])
        )


def _receive(listener: socket.socket, context: ssl.SSLContext, received: list[int]) -> None:
    conn, _ = listener.accept()
    with context.wrap_socket(conn, server_side=True) as tls:
        buffer = bytearray(READ)
        while n := tls.recv_into(buffer):
            received[0] += n


# the relays ------------------------------------------------------------------------------


def _frames_tap():  # type: ignore[no-untyped-def]
    """What the kube service does with exec's output when nobody records or watches it:
    reads the frames' heads in passing, passes on whole frames."""
    reader = wsframes.FrameReader()

    def tap(data: memoryview) -> tuple[list[memoryview], int]:
        found, used = reader.feed(data)
        for frame in found:
            if frame.channel == wsframes.STATUS and frame.fin:
                wsframes.exit_code(frame.data)
        return ([data[:used]] if used else []), used

    return tap


async def _relay_splice(contexts, upstream_port: int, ready: Connection, frames: bool) -> None:  # type: ignore[no-untyped-def]
    server_ctx, client_ctx = contexts
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", upstream_port, ssl=client_ctx, server_hostname="localhost"
        )
        await splice(reader, writer, up_reader, up_writer, a_tap=_frames_tap() if frames else None)
        up_writer.close()
        await up_writer.wait_closed()
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    ready.send(server.sockets[0].getsockname()[1])
    await done.wait()
    server.close()


async def _wait_fd(add, remove, fd: int) -> None:  # type: ignore[no-untyped-def]
    waiter = asyncio.get_running_loop().create_future()
    add(fd, waiter.set_result, None)
    try:
        await waiter
    finally:
        remove(fd)


async def _handshake(tls: ssl.SSLSocket) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            await _wait_fd(loop.add_reader, loop.remove_reader, tls.fileno())
        except ssl.SSLWantWriteError:
            await _wait_fd(loop.add_writer, loop.remove_writer, tls.fileno())


class _Pump:
    """source -> sink on readiness: read while the source has records, stop reading
    while the sink's socket is full."""

    def __init__(self, source: ssl.SSLSocket, sink: ssl.SSLSocket, done: asyncio.Future) -> None:  # type: ignore[type-arg]
        self.loop = asyncio.get_running_loop()
        self.source, self.sink, self.done = source, sink, done
        self.buffer = bytearray(READ)
        self.pending = memoryview(b"")
        self.loop.add_reader(source.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                n = self.source.recv_into(self.buffer)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            if not n:
                self.loop.remove_reader(self.source.fileno())
                self.done.set_result(None)
                return
            self.pending = memoryview(self.buffer)[:n]
            if not self._send():
                self.loop.remove_reader(self.source.fileno())
                self.loop.add_writer(self.sink.fileno(), self._writable)
                return

    def _send(self) -> bool:
        try:
            while self.pending:
                self.pending = self.pending[self.sink.send(self.pending) :]
        except ssl.SSLWantWriteError:
            return False  # OpenSSL wants the same buffer again
        return True

    def _writable(self) -> None:
        if self._send():
            self.loop.remove_writer(self.sink.fileno())
            self.loop.add_reader(self.source.fileno(), self._readable)


async def _relay_socket_bio(contexts, upstream_port: int, ready: Connection) -> None:  # type: ignore[no-untyped-def]
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    ready.send(listener.getsockname()[1])
    conn, _ = await loop.sock_accept(listener)
    conn.setblocking(False)
    downstream = server_ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    await _handshake(downstream)
    raw = socket.socket()
    raw.setblocking(False)
    await loop.sock_connect(raw, ("127.0.0.1", upstream_port))
    upstream = client_ctx.wrap_socket(
        raw, server_hostname="localhost", do_handshake_on_connect=False
    )
    await _handshake(upstream)
    done = loop.create_future()
    _Pump(downstream, upstream, done)
    await done
    upstream.setblocking(True)
    _finish(upstream)
    upstream.close()
    downstream.close()


def _relay_thread(contexts, upstream_port: int, ready: Connection) -> None:  # type: ignore[no-untyped-def]
    server_ctx, client_ctx = contexts
    listener = socket.create_server(("127.0.0.1", 0))
    ready.send(listener.getsockname()[1])
    conn, _ = listener.accept()

    def run() -> None:
        with server_ctx.wrap_socket(conn, server_side=True) as downstream:
            raw = socket.create_connection(("127.0.0.1", upstream_port))
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as upstream:
                buffer = bytearray(READ)
                view = memoryview(buffer)
                while n := downstream.recv_into(buffer):
                    upstream.sendall(view[:n])
                _finish(upstream)

    relay = threading.Thread(target=run)
    relay.start()
    relay.join()


def _finish(upstream: ssl.SSLSocket) -> None:
    """Ends the stream to the receiver, then reads what it sent (its session tickets)
    until it closes: a socket closed with unread data sends a reset, which can take the
    receiver's last bytes with it."""
    upstream.shutdown(socket.SHUT_WR)
    while upstream.recv(4096):
        pass


def _relay(
    way: str, directory: Path, upstream_port: int, loop_name: str, ready: Connection
) -> None:
    """One relay process: relays one connection, then sends the CPU seconds that took
    (the process's start and imports left out)."""
    started = _cpu()
    contexts = _contexts(directory)
    if loop_name == "uvloop":
        import uvloop

        uvloop.install()
    if way in ("splice", "splice+frames"):
        asyncio.run(_relay_splice(contexts, upstream_port, ready, way == "splice+frames"))
    elif way == "socket-bio":
        asyncio.run(_relay_socket_bio(contexts, upstream_port, ready))
    else:
        _relay_thread(contexts, upstream_port, ready)
    ready.send(_cpu() - started)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# the run ----------------------------------------------------------------------------------


def _aes_speed() -> str:
    try:
        out = subprocess.run(
            ["openssl", "speed", "-seconds", "1", "-bytes", "16384", "-evp", "aes-256-gcm"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        kbps = float(out.strip().splitlines()[-1].split()[-1].rstrip("k"))
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return "openssl speed: not available"
    return f"openssl speed aes-256-gcm (16 KiB records, one core): {kbps / 1e6:.2f} GB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tls-relay-") as tmp:
        directory = Path(tmp)
        self_signed(directory, "relay")
        control, ends_end = spawn.Pipe()
        ends = spawn.Process(target=_ends, args=(directory, args.size, ends_end), daemon=True)
        ends.start()
        upstream_port = control.recv()
        cpu: dict[str, list[float]] = {way: [] for way in args.ways}
        rate: dict[str, list[float]] = {way: [] for way in args.ways}
        for _ in range(args.rounds):
            for way in args.ways:
                ready, relay_end = spawn.Pipe()
                relay = spawn.Process(
                    target=_relay,
                    args=(way, directory, upstream_port, args.event_loop, relay_end),
                )
                relay.start()
                control.send(ready.recv())
                rate[way].append(control.recv())
                cpu[way].append(ready.recv())
                relay.join()
        control.send(None)
        ends.join(10)
    mib = args.size >> 20
    print(
        f"one TLS relay of {mib} MiB as 64 KiB exec frames, {args.event_loop}, "
        f"median of {args.rounds}"
    )
    print(_aes_speed())
    floor = statistics.median(cpu["thread"]) if "thread" in cpu else None
    for way in args.ways:
        mid = statistics.median(cpu[way])
        ratio = f"  {mid / floor:.2f}x thread" if floor else ""
        lost = f" ({-min(rate[way]):.0f} bytes lost!)" if min(rate[way]) < 0 else ""
        print(
            f"  {way:14} CPU {mid:.3f} s per run ({', '.join(f'{c:.3f}' for c in cpu[way])})"
            f"{ratio}  receiver {statistics.median(rate[way]):.0f} MB/s{lost}"
        )


if __name__ == "__main__":
    main()
