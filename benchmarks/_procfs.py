"""What ``/proc`` says about processes: CPU used, peak and current RSS, descendants,
and the CPU other processes used meanwhile.

The benchmarks read these instead of timing alone: CPU per request and peak RSS
are rows of the report, and on a shared 2-core machine a busy neighbour moves
every figure, so each report says how much of the machine others took.
Linux only, plain standard library.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def _read_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    head, _, tail = raw.rpartition(")")
    return [head.split(" (", 1)[1], *tail.split()]


def proc_comm(pid: int) -> str | None:
    """The process's command name (``/proc/PID/comm``), or None if it is gone."""
    stat = _read_stat(pid)
    return None if stat is None else stat[0]


def proc_start_ticks(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the PID it names a process uniquely."""
    stat = _read_stat(pid)
    return None if stat is None else int(stat[20])


def proc_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds used so far by ``pid`` (not its children)."""
    stat = _read_stat(pid)
    if stat is None:
        return None
    return (int(stat[12]) + int(stat[13])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (e.g. ``VmHWM``, ``VmRSS``) in KiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` value 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is not None:
            children[int(stat[2])].append(int(entry))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


@dataclass(frozen=True)
class ProcSample:
    """Peak RSS and CPU of one process at one moment."""

    pid: int
    comm: str
    vmhwm_kib: int
    vmrss_kib: int
    cpu_s: float


def sample(pids: Sequence[int]) -> list[ProcSample]:
    """Read VmHWM, VmRSS and CPU of each live process in ``pids``."""
    samples: list[ProcSample] = []
    for pid in pids:
        comm = proc_comm(pid)
        hwm = proc_status_kib(pid, "VmHWM")
        rss = proc_status_kib(pid, "VmRSS")
        cpu = proc_cpu_s(pid)
        if comm is None or hwm is None or rss is None or cpu is None:
            continue
        samples.append(ProcSample(pid=pid, comm=comm, vmhwm_kib=hwm, vmrss_kib=rss, cpu_s=cpu))
    return samples


def cpu_total_s(pids: Sequence[int]) -> float:
    """Sum of user+system CPU seconds of the live processes in ``pids``."""
    return sum(cpu for pid in pids if (cpu := proc_cpu_s(pid)) is not None)


def _busy_ticks() -> int:
    """Machine-wide user+nice+system clock ticks (/proc/stat). irq/softirq are left
    out: loopback traffic of our own shows up there."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def _own_tree_s() -> float:
    """CPU seconds used by this process and all its descendants, live or reaped."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in descendants(os.getpid()):
        stat = _read_stat(pid)
        if stat is not None:  # utime, stime, cutime, cstime (reaped children)
            total += sum(int(value) for value in stat[12:16]) / ticks
    return total


class ForeignLoad:
    """Measures CPU used by processes that are not ours (another test run, a build)
    over a window: machine busy time minus our process tree's. On a 2-core machine a
    busy neighbour moves every figure, so reports carry this number."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._busy = _busy_ticks()
        self._own = _own_tree_s()

    def cores(self) -> float:
        """Average number of cores used by others since construction (>= 0)."""
        elapsed = time.monotonic() - self._start
        if elapsed <= 0:
            return 0.0
        busy_s = (_busy_ticks() - self._busy) / os.sysconf("SC_CLK_TCK")
        return max(0.0, (busy_s - (_own_tree_s() - self._own)) / elapsed)
