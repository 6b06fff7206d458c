"""The node's spawn helper: a small process that starts session children as their login.

Why a second process: subprocess cannot vfork when it must switch user, so the node
forked its whole self (a Python process of ~100 MB) for every session — page tables and
copy-on-write faults cost about 8 ms of CPU per start, with the node's event loop stopped
meanwhile. This helper imports only the standard library and forks from its few MB.
The node starts it once (node/spawner.py is the node's side) and it exits when the node
closes its end of the socket.

One message per datagram on a SOCK_SEQPACKET socketpair (JSON, fds as SCM_RIGHTS):

    node   -> helper  {"id", "executable", "argv", "env", "cwd", "ids", "ctty"}
                      + [stdin, stdout, stderr]
    helper -> node    {"id", "pid"} + [pidfd]       the child has exec'd
                      {"id", "errno", "message"}    it could not (nothing runs)
                      {"exited": pid, "returncode"} a child ended and was reaped here

This module runs as `python -I -m certgate.node.spawn_server FD`: stdlib only.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import sys
import termios
from collections.abc import Sequence
from typing import Any

MAX_MESSAGE = 1 << 20  # env and argv of one request; sessions send a few KiB
STDIO = 3  # fds that come with a request


def recv_message(sock: socket.socket, max_fds: int) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the fds that came with it; (None, []) once the peer closed."""
    fds = array.array("i")
    try:
        data, ancdata, _flags, _addr = sock.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(max_fds * fds.itemsize)
        )
    except ConnectionResetError:
        # The peer died with messages of ours unread: the kernel resets, not closes.
        return None, []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def _exec_child(request: dict[str, Any], stdio: list[int], errpipe: int) -> None:
    """In the forked child: become the session's process and exec; never returns."""
    try:
        # Python ignores SIGPIPE and SIGXFSZ at start-up, and exec keeps ignored signals
        # ignored: a shell must start with the defaults (a pipeline's writer dies of
        # SIGPIPE; an interactive shell's commands die of ^C).
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        if request["ctty"]:
            # A session leader claiming its pty: job control, ^C, SIGHUP on hang-up.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.chdir(request["cwd"])
        ids = request["ids"]
        if ids is not None:
            uid, gid, groups = ids
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        os.closerange(STDIO, errpipe)
        os.closerange(errpipe + 1, os.sysconf("SC_OPEN_MAX"))
        os.execve(request["executable"], request["argv"], request["env"])
    except OSError as exc:
        with contextlib.suppress(BaseException):
            os.write(errpipe, json.dumps([exc.errno or 0, str(exc)]).encode())
    except BaseException as exc:  # never run on into the helper's loop
        with contextlib.suppress(BaseException):
            os.write(errpipe, json.dumps([0, repr(exc)]).encode())
    finally:
        os._exit(127)


def _start(request: dict[str, Any], stdio: list[int]) -> tuple[dict[str, Any], int | None]:
    """Fork and exec one child: (the reply, its pidfd) once exec succeeded or failed."""
    reply: dict[str, Any] = {"id": request["id"]}
    errpipe_r, errpipe_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(errpipe_r)
            _exec_child(request, stdio, errpipe_w)
        os.close(errpipe_w)
        errpipe_w = -1
        failure = b""
        while chunk := os.read(errpipe_r, 4096):  # EOF: exec closed it (CLOEXEC)
            failure += chunk
    finally:
        os.close(errpipe_r)
        if errpipe_w >= 0:
            os.close(errpipe_w)
        for fd in stdio:
            os.close(fd)
    if failure:
        os.waitpid(pid, 0)
        number, message = json.loads(failure)
        reply.update(errno=number, message=message)
        return reply, None
    reply["pid"] = pid
    return reply, os.pidfd_open(pid)


def serve(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    children: dict[int, int] = {}  # pidfd -> pid, reaped here when it becomes readable
    while True:
        for fd, _events in poller.poll():
            if fd == sock.fileno():
                request, stdio = recv_message(sock, STDIO)
                if request is None:
                    return  # the node closed its end (or died)
                if len(stdio) != STDIO:
                    for extra in stdio:
                        os.close(extra)
                    refusal = "a spawn request needs 3 descriptors"
                    send_message(sock, {"id": request.get("id"), "errno": 0, "message": refusal})
                    continue
                reply, pidfd = _start(request, stdio)
                if pidfd is None:
                    send_message(sock, reply)
                    continue
                children[pidfd] = reply["pid"]
                poller.register(pidfd, select.POLLIN)
                try:
                    send_message(sock, reply, [pidfd])
                except OSError:
                    return
            else:
                pid = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                try:
                    send_message(
                        sock, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}
                    )
                except OSError:
                    return


def main() -> None:
    # Its own session (the node starts it so): a ^C at the node's terminal never reaches
    # it; it ends when the node closes its end of the socket.
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
