"""What the benchmarks read of their processes in /proc: trees and CPU seconds."""

from __future__ import annotations

import os
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
