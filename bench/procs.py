"""What the benchmarks read of their processes in /proc (trees, CPU seconds), where
they put them (`core_split`, `pin`: servers on one core, their load generators on the rest),
and how they read a py-spy profile of them (`tally_stacks`, `top_lines`)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces); None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children() -> dict[int, list[int]]:
    """Every process's children now, by parent pid."""
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            found.setdefault(int(fields[1]), []).append(int(entry))
    return found


def tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants now."""
    below = children()
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(below.get(pid, []))
    return found


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU of the trees, children that were waited for included (cutime, cstime)."""
    ticks = 0
    for pid in tree(roots):
        if (fields := _stat_fields(pid)) is not None:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / TICK


def own_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU of these processes alone: not their children, reaped or alive."""
    ticks = 0
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime stime
    return ticks / TICK


ALL = set(range(os.cpu_count() or 1))


def core_split() -> tuple[set[int], set[int]]:
    """(server cores, client cores): the servers share the first core, the clients get
    the rest, so a client's CPU never stands in for a server's."""
    cores = sorted(ALL)
    if len(cores) < 2:
        raise SystemExit("pinning servers and clients apart needs at least 2 cores")
    return {cores[0]}, set(cores[1:])


def pin(roots: Iterable[int], cpus: set[int]) -> None:
    """Every thread of every process of the trees onto `cpus` (affinity is per thread on
    Linux; threads and children started later inherit it from their creator)."""
    for pid in tree(roots):
        try:
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue  # gone meanwhile
        for tid in threads:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass  # gone meanwhile


def own_autogroup(nice: int) -> str:
    """Put this process in a scheduling group of its own, at `nice`; what happened, in
    words.

    Linux with autogroups (`/proc/sys/kernel/sched_autogroup_enabled`) shares a core
    equally between sessions, whatever their processes' nice values: a benchmark pinned
    to one core got a fifth of it while other sessions ran tests at nice 15 there. A new
    session is a new group (its children join it); a negative nice needs root.
    """
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "no autogroups here"
    if enabled != "1":
        return "autogroups off"
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except OSError as exc:  # a process group leader cannot
            return f"no scheduling group of its own ({exc.strerror})"
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError as exc:
        return f"own scheduling group, nice not set ({exc.strerror})"
    return f"own scheduling group at nice {nice}"


def py_spy_path() -> Path:
    """py-spy (`pip install py-spy` into .venv), else $PY_SPY or the one on PATH."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        py_spy = Path(os.environ.get("PY_SPY", shutil.which("py-spy") or "/tmp/spy/bin/py-spy"))
    return py_spy


def tally_stacks(path: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """py-spy's collapsed stacks in `path`: samples per function, inclusive (the function
    and what it calls) and self, and the samples in all."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    return inclusive, own, total


def top_lines(
    inclusive: dict[str, int], own: dict[str, int], per: float, top: int, decimals: int
) -> list[str]:
    """The `top` functions by inclusive samples, then by self samples, in ms (`per` ms a
    sample)."""
    width = f"8.{decimals}f"
    lines = [f"{'incl ms':>8} {'self ms':>8}  function"]
    for frame, count in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{count * per:{width}} {own.get(frame, 0) * per:{width}}  {frame}")
    lines.append("top self:")
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{count * per:{width}}  {frame}")
    return lines
