"""Seconds per search step (one weight step + one architecture step) of each relaxation.

For a recipe's space and search batch, on random images at the given crop sizes: `softmax`
(every op of every edge runs), `gumbel` (one sampled op per edge; the architecture step also runs
every op without a graph for its gradient, `search.path_gradient: all_ops`), `gumbel-sampled`
(GDAS's gradient: the drawn op only) and `gumbel-pair` (the CamVid recipe's: a second drawn op per
edge without a graph, weights on uniform paths), interleaved in rounds so a slow phase of the machine hits
all alike; reports the median seconds per step, the ratios, and architecture steps per CPU-hour. The latency term is left out (λ = 0): it is a few hundred
multiply-adds next to the network.

    python benchmarks/search_step.py --config camvid --crop 180x240 --crop 360x480 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from gasnas.config import load_config, parse_size, replace
from gasnas.engine.architect import Architect
from gasnas.engine.losses import build_criterion
from gasnas.engine.relaxation import Relaxation
from gasnas.engine.search import weight_step
from gasnas.fileio import exclusive_lock
from gasnas.space.supernet import Supernet


class _NoLatency:
    """A budget stand-in whose latency term is zero (what is timed is the network)."""

    def loss(self, weights, *args):
        zero = weights[0].sum() * 0.0
        return zero, zero

    def record_ce_gradients(self, grads) -> None:
        pass


# (search.relaxation, search.path_gradient, search.weight_path)
MODES = {"softmax": ("softmax", "all_ops", "alpha"), "gumbel": ("gumbel", "all_ops", "alpha"),
         "gumbel-sampled": ("gumbel", "sampled", "alpha"), "gumbel-pair": ("gumbel", "pair", "uniform")}


def time_steps(cfg, mode: str, crop: list[int], steps: int) -> list[float]:
    relaxation, path_gradient, weight_path = MODES[mode]
    sc = replace(cfg.search, relaxation=relaxation, path_gradient=path_gradient, weight_path=weight_path)
    torch.manual_seed(0)
    net = Supernet(cfg.space, cfg.data.num_classes, recompute_stages=sc.recompute_stages)
    relax = Relaxation(sc, list(cfg.space.ops), 0)
    criterion = build_criterion(cfg.data.ignore_index, False, cfg.train.ohem_thresh, cfg.train.ohem_min_kept)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=sc.w_lr, momentum=sc.w_momentum)
    arch = Architect(net, criterion, sc, _NoLatency(), relax)
    info = SimpleNamespace(enabled=False, world=1, rank=0, main=True)
    x = torch.randn(sc.batch_size, 3, *crop)
    y = torch.randint(0, cfg.data.num_classes, (sc.batch_size, *crop))
    net.train()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            w, _ = relax.step_weights(net, sc.warmup_epochs, i, steps)
        weight_step(net, w_opt, criterion, x, y, sc.grad_clip, info, w)
        arch.step(x, y, sc.warmup_epochs, i, steps)
        if i:  # the first step pays for allocations
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="camvid")
    ap.add_argument("--crop", action="append", help="HxW (repeatable); default: the recipe's search crop")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per relaxation per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--lock", default=None, help="flock file taken exclusively while timing")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    crops = [parse_size(c, "--crop") for c in (args.crop or [])] or [cfg.search.crop_size or cfg.data.crop_size]
    results = []
    for crop in crops:
        per: dict[str, list[float]] = {m: [] for m in args.modes}
        with exclusive_lock(args.lock):
            for _ in range(args.rounds):
                for mode in per:
                    per[mode] += time_steps(cfg, mode, crop, args.steps)
        med = {m: statistics.median(v) for m, v in per.items()}
        base = args.modes[0]
        row = {"config": args.config, "crop": crop, "batch": cfg.search.batch_size, "threads": torch.get_num_threads(),
               "seconds_per_step": med, f"speedup_vs_{base}": {m: med[base] / s for m, s in med.items()},
               "arch_steps_per_cpu_hour": {m: 3600 / s for m, s in med.items()}}
        results.append(row)
        print(f"{crop[0]}x{crop[1]} batch {row['batch']}: " + ", ".join(
            f"{m} {s:.2f} s/step (x{med[base] / s:.2f} {base}, {3600 / s:.0f} arch steps/h)" for m, s in med.items()),
            flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
