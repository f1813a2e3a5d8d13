"""How busy the machine was with *other* processes while we timed something (Linux only).

Latency numbers from a shared machine are only as good as its quiet: another process on one
of two cores can double a median. `CpuWatch` reads /proc/stat (all CPUs) and this process's
own CPU time, and reports the difference as the average number of cores used by others.
"""

from __future__ import annotations

import os
import time


def _machine_busy_ticks() -> int | None:
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]) - idle


def _own_ticks() -> int | None:
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


class CpuWatch:
    """`with CpuWatch() as w: ...` then `w.foreign_cores` (None where /proc is unavailable)."""

    def __init__(self) -> None:
        self.foreign_cores: float | None = None

    def __enter__(self) -> CpuWatch:
        self._busy, self._own, self._t = _machine_busy_ticks(), _own_ticks(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own = _machine_busy_ticks(), _own_ticks()
        dt = time.perf_counter() - self._t
        if None in (busy, own, self._busy, self._own) or dt <= 0:
            return
        tick = os.sysconf("SC_CLK_TCK")
        foreign = ((busy - self._busy) - (own - self._own)) / tick / dt
        self.foreign_cores = max(0.0, foreign)
