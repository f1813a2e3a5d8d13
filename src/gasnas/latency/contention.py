"""How busy the machine was with *other* processes while we timed something (Linux only).

Latency numbers from a shared machine are only as good as its quiet: on a 2-core CPU one busy
process next to a 2-thread measurement can slow a forward pass 2x (and far more when OpenMP
threads wait on each other). `CpuWatch` reads /proc/stat (all CPUs) and this process's own CPU
time and reports the difference as the average number of cores other processes used.
`Quiet` turns that into a policy: wait for a quiet moment before a measurement, and redo a
measurement during which others were busy (keeping the lowest result; others only ever add
time). Where /proc is unavailable everything degrades to "unknown, measure anyway".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field


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
        self.seconds = 0.0

    def __enter__(self) -> CpuWatch:
        self._busy, self._own, self._t = _machine_busy_ticks(), _own_ticks(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own = _machine_busy_ticks(), _own_ticks()
        self.seconds = time.perf_counter() - self._t
        if None in (busy, own, self._busy, self._own) or self.seconds <= 0:
            return
        tick = os.sysconf("SC_CLK_TCK")
        foreign = ((busy - self._busy) - (own - self._own)) / tick / self.seconds
        self.foreign_cores = max(0.0, foreign)


def busy_threshold(threads: int | None) -> float:
    """Other processes' load (cores) that starts to disturb a measurement using `threads`:
    more than the cores we leave free (at least 0.2). With every core in use, any neighbour
    hurts: OpenMP threads wait for each other at every barrier, and a 2-thread forward pass
    next to one busy process took 4x its quiet time here; with one thread on a 2-core CPU,
    the same neighbour changed it by a few percent."""
    cores = os.cpu_count() or 1
    used = threads if threads is not None else cores
    return max(0.2, cores - used + 0.2)


@dataclass
class Quiet:
    """Wait-for-quiet and redo-if-disturbed policy for timing on a shared machine.

    threshold: other processes' average cores above which a moment counts as busy.
    max_wait_s: longest wait for a quiet moment before measuring anyway (0: never wait).
    retries: how often a disturbed measurement is redone (the lowest result is kept).
    total_wait_s: all waits together stop here (a machine that is never quiet still finishes).
    """

    threshold: float = 0.2
    max_wait_s: float = 30.0
    retries: int = 2
    window_s: float = 0.5
    total_wait_s: float = 600.0
    # Accumulated over this policy's measurements: counts and the other processes' load.
    measured: int = 0
    disturbed: int = 0
    waited_s: float = 0.0
    foreign_samples: list[float] = field(default_factory=list)
    _last_busy: bool = True  # so the first measurement waits for quiet

    def wait(self) -> float | None:
        """Sleep until others use less than `threshold` cores over a window, or `max_wait_s`."""
        if self.max_wait_s <= 0 or self.waited_s >= self.total_wait_s:
            return None
        t0 = time.perf_counter()
        load = None
        while True:
            with CpuWatch() as w:
                time.sleep(self.window_s)
            load = w.foreign_cores
            spent = time.perf_counter() - t0
            if (load is None or load < self.threshold or spent >= self.max_wait_s
                    or self.waited_s + spent >= self.total_wait_s):
                self.waited_s += spent
                return load

    def measure(self, fn: Callable[[], float]) -> float:
        """Run the timing `fn` (returns ms) under the policy and return the lowest result.

        Waits for quiet before the first measurement and after a disturbed one; a measurement
        during which others used `threshold` cores or more is redone up to `retries` times."""
        best = None
        for attempt in range(self.retries + 1):
            if attempt > 0 or self._last_busy:
                self.wait()
            with CpuWatch() as w:
                ms = fn()
            best = ms if best is None else min(best, ms)
            load = w.foreign_cores
            if load is not None:
                self.foreign_samples.append(load)
            self._last_busy = load is not None and load >= self.threshold
            if not self._last_busy:
                break
        else:
            self.disturbed += 1
        self.measured += 1
        return float(best)

    def summary(self) -> dict[str, float | int | None]:
        s = self.foreign_samples
        return {
            "measurements": self.measured,
            "still_disturbed": self.disturbed,
            "foreign_cpu_cores_mean": sum(s) / len(s) if s else None,
            "waited_s": round(self.waited_s, 1),
            "threshold_cores": self.threshold,
        }

