"""When each connection's close from the server reaches the client host, seen from outside
the benchmark's own clients.

A benchmark's client processes (asyncssh, hundreds of connections each, on the same
cores as the servers) take a while to work through their share of connection teardowns,
one after the other: what they note is when *they* got round to a close, not when it
arrived. A real user's ssh holds one connection and prints the disconnect as soon as
the server's FIN (or RST) arrives. So the clients hand a duplicate of each connection's
socket to this observer (SCM_RIGHTS over a Unix socket) before the servers act; it keeps
them in one epoll set for EPOLLRDHUP (the peer's FIN) and EPOLLHUP/EPOLLERR (both ways
shut, an RST), and notes time.monotonic() — one clock for every process of the host —
when the kernel reports each. It reads nothing: the clients still get every byte.

    observer = CloseObserver.start(directory)    # the benchmark's main process
    hand_over(observer.path, [(key, sock), ...])  # each client process, before the event
    closes = observer.collect(count, timeout)     # {key: monotonic time}, then forgotten
    observer.stop()

The observer is the measuring instrument, so its timestamps must not wait for a core:
a user's client runs on another machine, not behind ten nodes, their shells and the
benchmark's clients on the same core. It asks for the real-time class (SCHED_FIFO,
priority 10: woken by a close, it runs at once, ahead of every ordinary process on its
core), else nice -10, and says which it got (`CloseObserver.priority`). It only sleeps
in epoll_wait and notes a time per batch of events, so it takes next to nothing from
the core it shares: a few µs per batch.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

# File descriptors per message (the kernel takes at most 253, SCM_MAX_FD).
CHUNK = 200
# What every close the observer watches for raises (EPOLLHUP and EPOLLERR always are).
CLOSED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
# The real-time priority asked for (1-99; any beats every SCHED_OTHER process), and the
# nice value taken when the real-time class is refused.
RT_PRIORITY = 10
NICE = -10


@dataclass
class CloseObserver:
    path: str
    process: BaseProcess
    control: Connection
    priority: str  # what the observer runs at, in words

    @classmethod
    def start(cls, directory: Path) -> CloseObserver:
        path = str(directory / "close-observer.sock")
        context = multiprocessing.get_context("spawn")
        mine, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(path, theirs), daemon=True)
        process.start()
        status, priority = mine.recv()
        if status != "ready":
            raise RuntimeError("the close observer did not start")
        return cls(path, process, mine, priority)

    def collect(self, count: int, timeout: float) -> dict[str, float]:
        """The closes seen since the last collect, once `count` were seen or `timeout`
        seconds passed; the sockets not closed by then are let go."""
        self.control.send((count, timeout))
        result: dict[str, float] = self.control.recv()
        return result

    def stop(self) -> None:
        self.control.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


def hand_over(path: str, sockets: Sequence[tuple[str, Any]]) -> None:
    """Give the observer a duplicate of each socket (anything with fileno()), named by
    its key; returns once it watches them all."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as link:
        link.connect(path)
        for start in range(0, len(sockets), CHUNK):
            chunk = sockets[start : start + CHUNK]
            keys = json.dumps([key for key, _ in chunk]).encode()
            socket.send_fds(link, [keys], [sock.fileno() for _, sock in chunk])
            if link.recv(16) != b"ok":
                raise RuntimeError("the close observer refused the sockets")


def raise_priority() -> str:
    """This process in the real-time class (SCHED_FIFO), else at nice -10; what it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        return f"real-time (SCHED_FIFO {RT_PRIORITY})"
    except (OSError, AttributeError) as exc:
        refused = getattr(exc, "strerror", None) or str(exc)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError as exc:
        return (
            f"ordinary priority (real-time refused: {refused}; nice {NICE} refused:"
            f" {exc.strerror}): its timestamps may wait for a busy core"
        )
    return (
        f"nice {NICE} (real-time refused: {refused}): its timestamps may wait for a busy"
        " core's other processes"
    )


def _serve(path: str, control: Connection) -> None:
    priority = raise_priority()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    poll = select.epoll()
    poll.register(listener.fileno(), select.EPOLLIN)
    poll.register(control.fileno(), select.EPOLLIN)
    links: dict[int, socket.socket] = {}
    watched: dict[int, str] = {}  # fd -> key
    closed: dict[str, float] = {}
    asked: tuple[int, float] | None = None  # (count, deadline) of a collect
    control.send(("ready", priority))
    while True:
        wait = -1.0 if asked is None else max(0.0, asked[1] - time.monotonic())
        events = poll.poll(wait)
        now = time.monotonic()  # once per batch: the first thing after the wake-up
        for fd, mask in events:
            if fd in watched and mask & CLOSED:
                closed[watched.pop(fd)] = now
                poll.unregister(fd)
                os.close(fd)
            elif fd == listener.fileno():
                link, _ = listener.accept()
                links[link.fileno()] = link
                poll.register(link.fileno(), select.EPOLLIN)
            elif fd in links:
                _receive(links, fd, poll, watched)
            elif fd == control.fileno():
                request = control.recv()
                if request is None:
                    return
                count, timeout = request
                asked = (count, now + timeout)
        if asked is not None and (len(closed) >= asked[0] or now >= asked[1]):
            control.send(dict(closed))
            closed.clear()
            for fd in list(watched):
                poll.unregister(fd)
                os.close(fd)
            watched.clear()
            asked = None


def _receive(
    links: dict[int, socket.socket], fd: int, poll: select.epoll, watched: dict[int, str]
) -> None:
    link = links[fd]
    message, fds, _, _ = socket.recv_fds(link, 65536, CHUNK)
    if not message:  # the client process hung up
        poll.unregister(fd)
        link.close()
        del links[fd]
        return
    for key, dup in zip(json.loads(message), fds, strict=True):
        watched[dup] = key
        poll.register(dup, CLOSED)
    link.send(b"ok")
