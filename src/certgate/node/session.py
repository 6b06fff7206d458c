"""Processes that run as a local Unix user, and the byte pumps around them.

A node runs every shell, command and SFTP server as the login's Unix user, the way
sshd does: uid, gid and supplementary groups from the account database, a login
environment, the home directory as cwd, a new session (process group) per child so the
whole job can be signalled at once.

This module knows nothing about SSH. `ChildProcess` owns the child's file descriptors
and moves bytes between them and a `ProcessSink` (the SSH channel, in sshd.py):

    channel data ──write_stdin()──▶ stdin fd / pty master ──▶ child
    channel      ◀──sink.output()── stdout/stderr fd / pty master ◀── child
    channel      ◀──sink.exited()── pidfd readable + all output drained

The data path is raw fds driven by the event loop (`add_reader`/`add_writer`) with
64 KiB reads: no asyncio streams (their `StreamReader` truncated large outputs in an
earlier experiment, NOTES.md) and no per-byte Python work.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import signal
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from certgate.errors import NotFound
from certgate.node.spawner import ChildSpec, Spawner, SpawnerGone

log = logging.getLogger(__name__)

SFTP_SERVER = "/usr/lib/openssh/sftp-server"

# Big enough to amortise one event-loop wakeup over a pipe's worth of data.
READ_SIZE = 64 * 1024
# Linux lets root grow a pipe to 1 MiB (fs.pipe-max-size); a fuller pipe means fewer
# wakeups per megabyte when the child writes faster than the client reads.
PIPE_SIZE = 1024 * 1024
# At most this many reads of what a pty still holds when its shell has exited.
_PTY_DRAIN_READS = 16
# How long a child gets between SIGHUP and SIGKILL when its channel goes away.
KILL_GRACE_SECONDS = 3.0
# The scheduling priority (nice) of a job from its hang-up on. A lock hangs up a
# thousand shells at once, and each one's exit (traps, history, logout scripts) costs
# CPU that the servers still cutting connections need more: at nice 19 the jobs take
# only what the servers leave.
HUNG_UP_NICE = 19
# How long a job cut by certgate (a lock, an idle timeout) stays stopped before its
# hang-up, at most: HANG_UP_AFTER plus up to HANG_UP_SPREAD at random. A lock cuts a
# thousand sessions at once; woken together, a thousand shells running their exit
# (traps, history, logout scripts) held the CPU the proxy needed for its own cut for
# a second, nice 19 or not (with autogroups each shell's session weighs as a group).
HANG_UP_AFTER = 1.0
HANG_UP_SPREAD = 1.0

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Client-supplied variables a session accepts (sshd's AcceptEnv default on Debian is
# LANG LC_*). Anything else (LD_PRELOAD, PATH, BASH_ENV...) could change what the
# target user's programs do, so it is dropped.
_ENV_ALLOWED = frozenset({"LANG", "TERM", "LANGUAGE"})
_ENV_ALLOWED_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class UnixAccount:
    """The parts of a passwd entry a session needs."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


def lookup_account(login: str) -> UnixAccount:
    """The Unix account `login`, with its supplementary groups; NotFound if absent."""
    try:
        entry = pwd.getpwnam(login)
    except KeyError:
        raise NotFound(f"unix user {login!r} does not exist on this node") from None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    shell = entry.pw_shell or "/bin/sh"
    return UnixAccount(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir or "/",
        shell=shell,
    )


def group_names(account: UnixAccount) -> list[str]:
    """Names of the account's groups (for audit fields); numeric when unnamed."""
    names = []
    for gid in account.groups:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return names


def filter_client_env(env: Mapping[str, str]) -> dict[str, str]:
    """The client's environment requests that are safe to pass on."""
    return {
        key: value
        for key, value in env.items()
        if key in _ENV_ALLOWED or key.startswith(_ENV_ALLOWED_PREFIXES)
    }


def login_environment(
    account: UnixAccount,
    *,
    client_env: Mapping[str, str] = {},
    term: str | None = None,
    extra: Mapping[str, str] = {},
) -> dict[str, str]:
    """The environment sshd would give `account`, plus allowed client variables."""
    env = filter_client_env(client_env)
    env.update(
        {
            "USER": account.name,
            "LOGNAME": account.name,
            "HOME": account.home,
            "SHELL": account.shell,
            "PATH": ROOT_PATH if account.uid == 0 else DEFAULT_PATH,
            "MAIL": f"/var/mail/{account.name}",
        }
    )
    if term:
        env["TERM"] = term
    env.update(extra)
    return env


def shell_argv(account: UnixAccount, command: str | None) -> tuple[str, list[str]]:
    """(executable, argv) for a login shell (argv0 "-bash") or `shell -c command`."""
    name = os.path.basename(account.shell)
    if command is None:
        return account.shell, ["-" + name]
    return account.shell, [name, "-c", command]


def set_window_size(
    fd: int, width: int, height: int, pixwidth: int = 0, pixheight: int = 0
) -> None:
    """Tell the pty its size; the kernel then sends SIGWINCH to the foreground job."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


def get_window_size(fd: int) -> tuple[int, int]:
    """(columns, rows) of a pty."""
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return cols, rows


def _take_controlling_tty() -> None:
    # Runs in the child between fork and exec, after setsid (start_new_session) made it
    # a session leader: claim fd 0 (the pty slave) as the controlling terminal so job
    # control, ^C and SIGHUP on hang-up work. subprocess has no option for this, and
    # this is a single ioctl with no allocation or locking, which is what makes a
    # preexec_fn tolerable in a process with threads.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ProcessHandle(Protocol):
    """What ChildProcess needs of its child: subprocess.Popen, or a SpawnedChild of the
    spawn helper (spawner.py)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ProcessSink(Protocol):
    """Where a ChildProcess delivers what its child produces."""

    def output(self, data: bytes, stderr: bool) -> None: ...

    def stdin_drained(self) -> None:
        """Input written earlier has reached the child; more may be sent."""

    def exited(self, returncode: int) -> None:
        """The child exited and all its output was delivered.

        `returncode` follows subprocess: negative means killed by that signal.
        """


class _NullSink:
    # Stands in once the channel has gone: output is dropped, the child is still reaped.
    def output(self, data: bytes, stderr: bool) -> None:
        pass

    def stdin_drained(self) -> None:
        pass

    def exited(self, returncode: int) -> None:
        pass


def _read_more(fd: int, first: bytes) -> bytes:
    """`first` and whatever else the pty holds now, up to READ_SIZE.

    A pty hands out at most 4 KiB a read; relaying each read as it comes makes one SSH
    packet (and one pass through every layer) per 4 KiB. Gathering what is already
    there costs one more read that comes back empty, and lets a fast writer's output
    leave in 64 KiB pieces while keystroke echoes still go out at once.
    """
    parts = [first]
    total = len(first)
    while total < READ_SIZE:
        try:
            more = os.read(fd, READ_SIZE - total)
        except OSError:  # EAGAIN: nothing more now; EIO: the next read reports it
            break
        if not more:
            break
        parts.append(more)
        total += len(more)
    return first if len(parts) == 1 else b"".join(parts)


def _nonblocking(fd: int) -> int:
    os.set_blocking(fd, False)
    return fd


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class ChildProcess:
    """A running child and the non-blocking pumps around its stdin/stdout/stderr.

    Build one with `spawn`. Output is read only while not paused (channel flow
    control); input that the child does not take at once is kept and `write_stdin`
    returns False until `sink.stdin_drained()` says it has gone.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: ProcessHandle,
        *,
        stdin_fd: int,
        stdout_fd: int,
        stderr_fd: int | None,
        pty_fd: int | None,
        sink: ProcessSink,
        pidfd: int | None = None,
    ) -> None:
        self._loop = loop
        self._popen = popen
        self.pid = popen.pid
        self._sink: ProcessSink = sink
        self._stdin_fd: int | None = stdin_fd
        self._pty_fd = pty_fd
        self._pending = bytearray()
        self._writer_active = False
        self._eof_requested = False
        # fd -> is-stderr; fds still to read to EOF.
        self._outputs: dict[int, bool] = {stdout_fd: False}
        if stderr_fd is not None:
            self._outputs[stderr_fd] = True
        self._paused = False
        self.returncode: int | None = None
        self._reported = False
        self._kill_timer: asyncio.TimerHandle | None = None
        self._pidfd: int | None = None
        self._poll_timer: asyncio.TimerHandle | None = None
        for fd in self._outputs:
            loop.add_reader(fd, self._read, fd)
        self._watch_exit(pidfd)

    # ---- exit --------------------------------------------------------------

    def _watch_exit(self, pidfd: int | None) -> None:
        try:
            # The spawn helper hands over a pidfd it opened before anyone could reap.
            self._pidfd = pidfd if pidfd is not None else os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # Kernels before 5.3: poll. Only a fallback; every supported host has pidfd.
            self._poll_timer = self._loop.call_later(0.1, self._poll_exit)
            return
        self._loop.add_reader(self._pidfd, self._reap)

    def _poll_exit(self) -> None:
        if self._popen.poll() is None:
            self._poll_timer = self._loop.call_later(0.1, self._poll_exit)
        else:
            self._reap()

    def _reap(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        # The pidfd is readable only once the child is a zombie, so this does not block.
        self.returncode = self._popen.wait()
        if self._pty_fd is not None:
            # Background jobs may keep the pty open forever; like sshd, the session ends
            # with its shell. Deliver what the pty already holds, then stop reading.
            self._drain_pty()
        self._maybe_finish()

    def _drain_pty(self) -> None:
        # Bounded: a background job that keeps writing (`yes &`) must not keep us here.
        for fd in list(self._outputs):
            for _ in range(_PTY_DRAIN_READS):
                if fd not in self._outputs:
                    break
                self._read(fd, force=True)
            self._close_output(fd)

    # ---- output ------------------------------------------------------------

    def _read(self, fd: int, force: bool = False) -> None:
        try:
            data = os.read(fd, READ_SIZE)
            if fd == self._pty_fd and 0 < len(data) < READ_SIZE:
                data = _read_more(fd, data)
        except BlockingIOError:
            if force:
                self._close_output(fd)
            return
        except OSError as exc:
            # EIO: every slave side of the pty is closed, the pty's way of saying EOF.
            if exc.errno != errno.EIO:
                log.debug("read from child fd failed: %s", exc)
            data = b""
        if not data:
            self._close_output(fd)
            self._maybe_finish()
            return
        self._sink.output(data, self._outputs[fd])

    def _close_output(self, fd: int) -> None:
        if self._outputs.pop(fd, None) is None:
            return
        if not self._paused:
            self._loop.remove_reader(fd)
        if fd == self._pty_fd:
            self._pty_fd = None
        os.close(fd)

    def pause_output(self) -> None:
        """Stop reading the child's output (the channel's buffer is full)."""
        if not self._paused:
            self._paused = True
            for fd in self._outputs:
                self._loop.remove_reader(fd)

    def resume_output(self) -> None:
        if self._paused:
            self._paused = False
            for fd in self._outputs:
                self._loop.add_reader(fd, self._read, fd)

    def _maybe_finish(self) -> None:
        if self.returncode is None or self._outputs or self._reported:
            return
        self._reported = True
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        self._close_stdin_now()
        self._sink.exited(self.returncode)

    # ---- input -------------------------------------------------------------

    def write_stdin(self, data: bytes) -> bool:
        """Send `data` to the child; False means "stop sending until stdin_drained"."""
        if self._stdin_fd is None:
            return True
        if self._pending:
            self._pending += data
            return False
        try:
            written = os.write(self._stdin_fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            # The child closed its stdin (EPIPE) or the pty is gone: like sshd, drop
            # input nobody will read rather than fail the session.
            self._close_stdin_now()
            return True
        if written == len(data):
            return True
        self._pending += data[written:]
        self._writer_active = True
        self._loop.add_writer(self._stdin_fd, self._flush_stdin)
        return False

    def _flush_stdin(self) -> None:
        assert self._stdin_fd is not None
        try:
            written = os.write(self._stdin_fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._close_stdin_now()
            self._sink.stdin_drained()
            return
        del self._pending[:written]
        if self._pending:
            return
        self._loop.remove_writer(self._stdin_fd)
        self._writer_active = False
        if self._eof_requested:
            self._close_stdin_now()
        self._sink.stdin_drained()

    def close_stdin(self) -> None:
        """The client sent EOF: close the child's stdin once pending input is written.

        With a pty there is no separate stdin to close (the master is also the output),
        so EOF is left to the terminal, as sshd does.
        """
        if self._pty_fd is not None:
            return
        self._eof_requested = True
        if not self._pending:
            self._close_stdin_now()

    def _close_stdin_now(self) -> None:
        fd, self._stdin_fd = self._stdin_fd, None
        self._pending.clear()
        if fd is None:
            return
        if self._writer_active:
            self._loop.remove_writer(fd)
            self._writer_active = False
        os.close(fd)

    # ---- terminal and signals ----------------------------------------------

    def resize(self, width: int, height: int, pixwidth: int = 0, pixheight: int = 0) -> None:
        if self._pty_fd is not None:
            with contextlib.suppress(OSError):
                set_window_size(self._pty_fd, width, height, pixwidth, pixheight)

    def signal(self, signum: int) -> None:
        """Signal the child's whole process group (it leads its own session)."""
        if self.returncode is None:
            self._signal_group(signum)

    def _signal_group(self, signum: int) -> None:
        # Also used after the leader was reaped while its output pipes are still held
        # open (a background job): Linux does not hand out a pid again while it names a
        # live process group, so the number still means this session's job.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def freeze(self) -> None:
        """Stop the whole job where it stands (SIGSTOP cannot be caught or ignored) until
        its hang-up: nothing of it runs any more, and stopping costs the CPU a signal, not
        the job's exit. `terminate` sends SIGCONT after SIGHUP, so the job then exits."""
        if not self._reported:
            self._signal_group(signal.SIGSTOP)

    def terminate(self) -> None:
        """The channel is gone: hang up on the child, SIGKILL it if it lingers.

        Output from now on is discarded; the child is still reaped and its fds closed.
        """
        self._sink = _NullSink()
        self._close_stdin_now()
        if self._reported:
            return
        self._lower_priority()
        # What a terminal hang-up delivers: SIGHUP, and SIGCONT so stopped jobs see it.
        self._signal_group(signal.SIGHUP)
        self._signal_group(signal.SIGCONT)
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(
                KILL_GRACE_SECONDS, self._signal_group, signal.SIGKILL
            )
        # Nobody reads the output any more; a child blocked writing would never exit.
        self.resume_output()

    def _lower_priority(self) -> None:
        # The whole job (the session's process group), as the signals. Only ever
        # lowered: a job at a lower priority already (nice 19) is left there.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PGRP, self.pid, HUNG_UP_NICE)
        # With the kernel's autogroups (sched_autogroup_enabled) the CPU is shared out
        # between sessions first, and nice counts only within one. The job is a session
        # of its own (setsid): unless its session's group is lowered too, each of a
        # thousand exiting shells weighs as much as the whole node and the proxy.
        with contextlib.suppress(OSError):
            with open(f"/proc/{self.pid}/autogroup", "w") as autogroup:
                autogroup.write(str(HUNG_UP_NICE))

    def close(self) -> None:
        """Release everything now (server shutdown): SIGKILL, close fds, stop watching."""
        self._sink = _NullSink()
        if not self._reported:
            self._signal_group(signal.SIGKILL)
        self._close_stdin_now()
        for fd in list(self._outputs):
            self._close_output(fd)
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.returncode is None:
            # SIGKILL was sent; the zombie is collected within milliseconds.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = self._popen.wait(timeout=1.0)


def spawn(
    account: UnixAccount,
    executable: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    sink: ProcessSink,
    *,
    pty_size: tuple[int, int, int, int] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    spawner: Spawner | None = None,
) -> ChildProcess:
    """Start `argv` as `account` and pump its fds to `sink`.

    With `pty_size` (width, height, pixwidth, pixheight) the child gets a new pty as
    stdin/stdout/stderr and controlling terminal; otherwise three pipes, so stdout and
    stderr stay apart and stdin can see EOF. With a `spawner` its helper process starts
    the child (spawn_server.py says why); without one, or when it is gone, this process
    forks.
    """
    loop = loop or asyncio.get_running_loop()
    # Switch identity only when we can and must: a node running unprivileged can still
    # serve sessions for its own user.
    switch = os.geteuid() == 0 or account.uid != os.geteuid()
    cwd = account.home if os.path.isdir(account.home) else "/"
    child_fds: list[int] = []
    parent_fds: list[int] = []
    try:
        if pty_size is not None:
            master, slave = os.openpty()
            parent_fds.append(master)
            child_fds.append(slave)
            set_window_size(slave, *pty_size)
            env = {**env, "SSH_TTY": os.ttyname(slave)}
            stdin_child = stdout_child = stderr_child = slave
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            parent_fds += [in_w, out_r, err_r]
            child_fds += [in_r, out_w, err_w]
            for fd in (in_w, out_r):
                _grow_pipe(fd)
            stdin_child, stdout_child, stderr_child = in_r, out_w, err_w
        ids = (account.uid, account.gid, list(account.groups)) if switch else None
        stdio = (stdin_child, stdout_child, stderr_child)
        spec = ChildSpec(executable, argv, dict(env), cwd, ids, stdio, pty_size is not None)
        popen, pidfd = _start_child(spawner, spec)
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    for fd in parent_fds:
        _nonblocking(fd)
    if pty_size is not None:
        master = parent_fds[0]
        # A second descriptor for writing, so closing the read side on EIO does not
        # pull the fd from under a pending write.
        writer = _nonblocking(os.dup(master))
        return ChildProcess(
            loop,
            popen,
            stdin_fd=writer,
            stdout_fd=master,
            stderr_fd=None,
            pty_fd=master,
            sink=sink,
            pidfd=pidfd,
        )
    in_w, out_r, err_r = parent_fds
    return ChildProcess(
        loop,
        popen,
        stdin_fd=in_w,
        stdout_fd=out_r,
        stderr_fd=err_r,
        pty_fd=None,
        sink=sink,
        pidfd=pidfd,
    )


def _start_child(spawner: Spawner | None, spec: ChildSpec) -> tuple[ProcessHandle, int | None]:
    """The child, started by the spawn helper if there is one (with its pidfd), else
    forked from this process (OSError if it cannot run, either way)."""
    if spawner is not None:
        try:
            child = spawner.spawn(spec)
        except SpawnerGone:
            pass  # fork ourselves below: slower, and the same child
        else:
            return child, child.pidfd
    ids = spec.ids
    popen = subprocess.Popen(
        list(spec.argv),
        executable=spec.executable,
        stdin=spec.stdio[0],
        stdout=spec.stdio[1],
        stderr=spec.stdio[2],
        env=spec.env,
        cwd=spec.cwd,
        user=ids[0] if ids is not None else None,
        group=ids[1] if ids is not None else None,
        extra_groups=ids[2] if ids is not None else None,
        start_new_session=True,
        preexec_fn=_take_controlling_tty if spec.ctty else None,
        close_fds=True,
    )
    return popen, None


def signal_by_name(name: str) -> int | None:
    """The signal an SSH "signal" request names ("INT", "TERM"...), if we forward it."""
    allowed = {"HUP", "INT", "QUIT", "TERM", "KILL", "USR1", "USR2", "ALRM", "CONT", "STOP"}
    if name not in allowed:
        return None
    return int(getattr(signal, "SIG" + name))


def signal_name(signum: int) -> str:
    """The SSH name of a signal ("TERM" for SIGTERM), as exit-signal reports it."""
    try:
        return signal.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)
