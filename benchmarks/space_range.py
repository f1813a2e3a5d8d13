"""Which latencies can a search space derive? Where a budget relative to LR-ASPP falls in it.

A budget outside what derivation can make is unreachable whatever the search does: λ climbs to
its cap and the latency pull decides every edge. For a recipe (and `--set` overrides, e.g. a
width), this builds a fresh latency table on this machine, then reports
- the fixed part of every net (stem, cell pre/post-processing, head, calibration offset),
- the predicted latency of the cheapest derivable net (each edge's cheapest op, at most
  search.max_skip_per_cell skips per cell), of uniformly drawn derivable nets (10th, 50th, 90th
  percentile) and of the costliest,
- the cheapest and the median drawn net measured beside LR-ASPP (random weights) in one
  round-robin run, as ratios to LR-ASPP.

    python benchmarks/space_range.py --config camvid [--set space.stage_channels=[64,128,256]
        --set space.head_channels=64 --set space.stem_channels=[16,32,64]] [--lock FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from gasnas.fileio import exclusive_lock


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="camvid")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--calibrate", type=int, default=8, help="derived nets measured to calibrate the table")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here too")
    ap.add_argument("--lock", default=None, help="flock file taken exclusively while timing")
    args = ap.parse_args(argv)

    import torch

    from gasnas.config import load_config
    from gasnas.latency.calibrate import calibrate
    from gasnas.latency.estimator import LatencyEstimator
    from gasnas.latency.measure import build_lut
    from gasnas.latency.timing import make_runner, time_round_robin
    from gasnas.models import build_peer
    from gasnas.space.derived import DerivedNet
    from gasnas.space.genotype import CellGene, Genotype, derive_cell
    from gasnas.space.network import plan_cells

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.overrides, f"latency.threads={args.threads}"])
    space, classes, size = cfg.space, cfg.data.num_classes, list(cfg.latency.input_size)
    cap = cfg.search.max_skip_per_cell

    def genotype(weights: list[torch.Tensor]) -> Genotype:
        cells = [CellGene(p.reduction, derive_cell(w, space.ops, space.nodes, max_skip=cap))
                 for p, w in zip(plan_cells(space), weights)]
        return Genotype(space, classes, cells)

    with exclusive_lock(args.lock):
        lut = build_lut(space, classes, cfg.latency, progress=False)
        if args.calibrate > 0:
            calibrate(lut, space, classes, cfg.latency, samples=args.calibrate, progress=False)
        est = LatencyEstimator(space, classes, lut, size, cfg.latency)
        cheapest = genotype([-c.double() for c in est.costs])
        costliest = genotype([c.double() for c in est.costs])
        gen = torch.Generator().manual_seed(0)
        drawn = sorted((genotype([torch.rand(c.shape, generator=gen, dtype=torch.float64) for c in est.costs])
                        for _ in range(args.draws)), key=est.predict)
        median = drawn[len(drawn) // 2]
        runners = {name: make_runner(net.eval(), size, "torch", "cpu", "fp32", args.threads) for name, net in {
            "lraspp": build_peer("lraspp_mobilenet_v3_large", classes),
            "cheapest": DerivedNet(cheapest), "median_drawn": DerivedNet(median)}.items()}
        measured = {k: statistics.median(v) for k, v in
                    time_round_robin(runners, args.rounds, args.repeats, warmup=4).items()}

    def pct(q: float) -> float:
        return round(est.predict(drawn[min(len(drawn) - 1, int(q * len(drawn)))]), 2)

    report = {
        "config": args.config, "overrides": args.overrides, "input_size": size, "threads": args.threads,
        "stage_channels": list(space.stage_channels), "max_skip_per_cell": cap,
        "predicted_ms": {"fixed": round(est.constant_ms, 2), "cheapest": round(est.predict(cheapest), 2),
                         "drawn_p10": pct(0.1), "drawn_p50": pct(0.5), "drawn_p90": pct(0.9),
                         "costliest": round(est.predict(costliest), 2)},
        "measured_ms_one_run": {k: round(v, 2) for k, v in measured.items()},
        "ratio_to_lraspp": {k: round(measured[k] / measured["lraspp"], 3) for k in ("cheapest", "median_drawn")},
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
