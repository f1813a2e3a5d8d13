"""Build the latency lookup table: time every op shape and fixed part a space needs.

Each entry is timed as a small module on batch-1 inputs of its exact shape, with the shared
timer (latency/timing.py): warm-up, then timed repeats, median. Tiny entries (tens of µs) get
more repeats, so that every entry is timed over at least `repeats x MS_PER_REPEAT` ms in total
(at most `MAX_REPEATS` runs). On the
`onnxruntime` backend each module is exported to ONNX in memory and timed in a session.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from gasnas import __version__
from gasnas.config import LatencyConfig, SpaceConfig
from gasnas.latency.contention import Quiet
from gasnas.latency.keys import Item, space_layout
from gasnas.latency.lut import LatencyTable
from gasnas.latency.timing import environment, make_runner, time_callable, torch_threads

MS_PER_REPEAT = 10.0  # an entry is timed over at least repeats x this many ms in total
MAX_REPEATS = 200


def table_env(lat_cfg: LatencyConfig) -> dict[str, Any]:
    """`timing.environment()` plus what a table needs for provenance."""
    env = environment(lat_cfg.device, lat_cfg.threads, lat_cfg.backend, lat_cfg.dtype)
    env.update({
        "gasnas_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "warmup": lat_cfg.warmup,
        "repeats": lat_cfg.repeats,
    })
    return env


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the ONNX exporter's warnings (tracer, deprecation) while a runner is built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def measure_item(item: Item, lat_cfg: LatencyConfig) -> float:
    """Median batch-1 milliseconds of one table entry under `lat_cfg`'s device/backend/threads."""
    module, inputs = item.build()
    h, w = inputs[0].shape[-2:]
    with torch_threads(lat_cfg.threads), quiet_export():
        run = make_runner(module, (h, w), lat_cfg.backend, lat_cfg.device, lat_cfg.dtype,
                          lat_cfg.threads, inputs=inputs)
        probe = time_callable(run, lat_cfg.warmup, 3, lat_cfg.device)
        repeats = lat_cfg.repeats
        if probe.median_ms > 0:
            repeats = max(repeats, math.ceil(MS_PER_REPEAT * lat_cfg.repeats / probe.median_ms))
        repeats = min(max(repeats, 1), max(MAX_REPEATS, lat_cfg.repeats))
        return time_callable(run, 0, repeats, lat_cfg.device).median_ms


def measure_into(table: LatencyTable, items: Iterable[Item], lat_cfg: LatencyConfig,
                 progress: bool = False, desc: str = "latency table", rounds: int = 1,
                 quiet: Quiet | None = None) -> list[str]:
    """Time the items whose key the table lacks and add them; returns the keys measured.

    With `rounds` > 1 every entry is timed once per pass and keeps its lowest median (on a
    shared machine, other processes only ever add time). `quiet` (default: record the load of
    other processes, never wait) decides whether to wait for and redo disturbed timings."""
    quiet = quiet if quiet is not None else Quiet(max_wait_s=0.0, retries=0)
    todo: dict[str, Item] = {}
    for it in items:
        if it.key not in table and it.key not in todo:
            todo[it.key] = it
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * rounds, desc=desc, unit="entry", leave=False)
    best: dict[str, float] = {}
    try:
        for _ in range(max(1, rounds)):
            for key, it in todo.items():
                ms = quiet.measure(lambda it=it: measure_item(it, lat_cfg))
                best[key] = min(ms, best.get(key, ms))
                if bar is not None:
                    bar.set_postfix_str(key[:40])
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    table.entries.update(best)
    return list(todo)


def build_lut(space: SpaceConfig, num_classes: int, lat_cfg: LatencyConfig,
              input_size: tuple[int, int] | list[int] | None = None, *, progress: bool = True,
              base: LatencyTable | None = None, rounds: int = 2,
              quiet: Quiet | None = None) -> LatencyTable:
    """Measure every entry `space` needs at `input_size` (default `lat_cfg.input_size`).

    With `base`, only the keys it lacks are measured and added to it (one table, many spaces);
    the table's environment must then match `lat_cfg` (checked by the caller). Each entry
    keeps the lowest median of `rounds` passes; `quiet` (latency/contention.py) may wait for
    other processes to go quiet.
    """
    size = list(input_size) if input_size is not None else list(lat_cfg.input_size)
    table = base if base is not None else LatencyTable(env=table_env(lat_cfg))
    layout = space_layout(space, num_classes, size)
    quiet = quiet if quiet is not None else Quiet(max_wait_s=0.0, retries=0)
    measure_into(table, layout.items(), lat_cfg, progress=progress, rounds=rounds, quiet=quiet)
    table.env["measurement"] = {"rounds": rounds, "ms_per_repeat": MS_PER_REPEAT, **quiet.summary()}
    sizes = table.env.setdefault("input_sizes", [])
    if size not in sizes:
        sizes.append(size)
    return table
