"""The node's side of the spawn helper (node/spawn_server.py has the why and the protocol).

    spawner = Spawner(); spawner.start()
    child = spawner.spawn(ChildSpec(executable, argv, env, cwd, ids, stdio, ctty))
    child.pid, child.pidfd        # readable once the child ended
    child.wait() / child.poll()   # its returncode, as subprocess.Popen reports it

Requests are synchronous: the helper answers once the child has exec'd (about a
millisecond), which is what `subprocess.Popen` made the node wait for anyway. Exit
reports arrive on the same socket in any order and are kept until their child asks.
When the helper is gone, `spawn()` raises SpawnerGone and the caller forks itself
(session.spawn does); children it already started report returncode 255.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from certgate.node.spawn_server import STDIO, recv_message, send_message

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 10.0
UNKNOWN_RETURNCODE = 255  # the helper died before it could say


@dataclass(frozen=True)
class ChildSpec:
    """What to start, as whom, on which descriptors."""

    executable: str
    argv: Sequence[str]
    env: dict[str, str]
    cwd: str
    ids: tuple[int, int, list[int]] | None  # (uid, gid, groups) to switch to
    stdio: tuple[int, int, int]  # stdin, stdout, stderr
    ctty: bool  # stdin is a pty the child takes as its controlling terminal


class SpawnerGone(Exception):
    """The helper is not running (never started, or it died)."""


class SpawnedChild:
    """A child the helper started: the part of subprocess.Popen the node uses."""

    def __init__(self, spawner: Spawner, pid: int, pidfd: int | None) -> None:
        self._spawner = spawner
        self.pid = pid
        self.pidfd = pidfd  # the caller owns it from here
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._spawner.returncode(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._spawner.returncode(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        return self.returncode


class Spawner:
    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._exited: dict[int, int] = {}
        self._next_id = 0

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-m", "certgate.node.spawn_server", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # Its own session: a ^C at the node's terminal is for the node, which
                # ends the helper by closing the socket.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # the helper sees EOF and exits
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def spawn(self, spec: ChildSpec) -> SpawnedChild:
        """Start the child (OSError if it cannot run, as from subprocess; SpawnerGone if
        the helper is not there). `spec.stdio` is sent: the caller still closes its copies."""
        if self._sock is None:
            raise SpawnerGone("the spawn helper is not running")
        self._next_id += 1
        request = {
            "id": self._next_id,
            "executable": spec.executable,
            "argv": list(spec.argv),
            "env": spec.env,
            "cwd": spec.cwd,
            "ids": list(spec.ids) if spec.ids is not None else None,
            "ctty": spec.ctty,
        }
        assert len(spec.stdio) == STDIO
        try:
            send_message(self._sock, request, list(spec.stdio))
            reply, fds = self._receive_until(lambda m: m.get("id") == request["id"], REPLY_TIMEOUT)
        except OSError as exc:
            self._gone(exc)
            raise SpawnerGone(f"the spawn helper failed: {exc}") from exc
        if reply is None:
            # Never fall back while a late answer could still start the child twice.
            self._gone(TimeoutError("no answer"))
            raise SpawnerGone("the spawn helper did not answer")
        if "pid" not in reply:
            for fd in fds:
                os.close(fd)
            number = int(reply.get("errno") or 0)
            raise OSError(number, str(reply.get("message", "cannot start the session")))
        return SpawnedChild(self, int(reply["pid"]), fds[0] if fds else None)

    def returncode(self, pid: int, timeout: float | None) -> int | None:
        """`pid`'s returncode once the helper reported it; None if not within `timeout`."""
        if pid in self._exited:
            return self._exited.pop(pid)
        if self._sock is None:
            return UNKNOWN_RETURNCODE
        try:
            self._receive_until(lambda m: m.get("exited") == pid, timeout)
        except OSError as exc:
            self._gone(exc)
        if pid in self._exited:
            return self._exited.pop(pid)
        return UNKNOWN_RETURNCODE if self._sock is None else None

    def _receive_until(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float | None
    ) -> tuple[dict[str, Any] | None, list[int]]:
        """Read messages (keeping exit reports) until one `wanted(message)` is true."""
        sock = self._sock
        assert sock is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                return None, []
            message, fds = recv_message(sock, 1)
            if message is None:
                self._gone(EOFError("the spawn helper closed its end"))
                return None, []
            if "exited" in message:
                self._exited[int(message["exited"])] = int(message["returncode"])
            if wanted(message):
                return message, fds
            for fd in fds:  # not ours to keep (a reply nobody waits for any more)
                os.close(fd)

    def _gone(self, exc: BaseException) -> None:
        if self._sock is not None:
            log.error("the node's spawn helper is gone (%s); sessions fork the node", exc)
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
