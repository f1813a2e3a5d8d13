"""How close `gasnas search --target-ms T` lands: three budgets, one recipe, one latency table.

For each T the search runs with the hinge loss toward T and λ adapted between epochs from the
measured latency of the derived net (engine/search.py). Afterwards every final genotype is
re-measured here, in fresh processes beside the searches' reference net on the calm-phase scale
the searches use (latency/isolated.py), and compared with T: the goal is ±10%. The space's
latency range (every edge the cheapest vs the costliest op) is measured too, so the budgets
can be read against it.

    python benchmarks/target_latency.py [--config demo] [--targets 9,11,13] [--out runs/target-ms]
        [--epochs N] [--repeats 20] [--set KEY=VALUE ...] [--lock /tmp/gasnas-cpu.lock]

The first search measures the table; the others reuse it (`latency.lut`), so all three share
one predictor. Writes OUT/summary.json and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--targets", default="9,11,13")
    ap.add_argument("--out", default="runs/target-ms")
    ap.add_argument("--epochs", type=int, default=None, help="search.epochs (default: the recipe's)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs when re-measuring each genotype")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--lock", default=None, help="flock file taken exclusively around each step")
    args = ap.parse_args()
    out = Path(args.out)
    lock = ["flock", "-x", args.lock] if args.lock else []
    targets = [float(t) for t in args.targets.split(",")]
    lut = None
    for t in targets:
        name = f"T{t:g}"
        sets = [f"name={name}", f"out_dir={out}", *args.set]
        if args.epochs is not None:
            sets.append(f"search.epochs={args.epochs}")
        if lut is not None:
            sets.append(f"latency.lut={lut}")
        if not (out / name / "genotype.json").is_file():
            cmd = [sys.executable, "-m", "gasnas", "search", "-c", args.config, "--target-ms", f"{t:g}",
                   "--no-progress"] + [x for s in sets for x in ("--set", s)]
            print("$ " + shlex.join(cmd), flush=True)
            subprocess.run(lock + cmd, check=True)
        lut = out / name / "lut.json"

    # re-measure every final genotype in one process, under the lock
    cmd = [sys.executable, __file__, "--measure", str(out), "--targets", args.targets, "--repeats", str(args.repeats),
           "--config", args.config] + [x for s in args.set for x in ("--set", s)]
    subprocess.run(lock + cmd, check=True)


def space_range(est, space, num_classes: int) -> tuple[Any, Any]:
    """The nets that use one op on every kept edge (each node keeps its edges from the two
    cell inputs): the cheapest and the costliest such net by prediction."""
    from gasnas.space.genotype import CellGene, Genotype
    from gasnas.space.network import plan_cells
    from gasnas.space.ops import OPS

    preds = []
    for op in space.ops:
        if OPS[op].free:
            continue
        edges = [(src, j, op) for j in range(space.nodes) for src in (0, 1)]
        g = Genotype(space, num_classes, [CellGene(p.reduction, edges) for p in plan_cells(space)])
        preds.append((est.predict(g), g))
    preds.sort(key=lambda p: p[0])
    return preds[0][1], preds[-1][1]


def measure(out: Path, targets: list[float], repeats: int, config: str, sets: list[str]) -> None:
    from gasnas.config import load_config
    from gasnas.engine.search import calm_reference
    from gasnas.latency import LatencyEstimator, LatencyTable
    from gasnas.latency.isolated import calm_measure
    from gasnas.latency.sampling import genotype_signature
    from gasnas.space.genotype import Genotype

    cfg = load_config(config, sets)
    lat = dataclasses.replace(cfg.latency, repeats=repeats)
    # every net is timed in a fresh process beside the first search's reference net and
    # reported on the calm-phase scale, as the searches measure (latency/isolated.py); the
    # scale starts from the calmest reference timing of the searches with that reference
    reference, calm_ms = calm_reference(out / f"T{targets[0]:g}")
    for t in targets[1:]:
        other, ms = calm_reference(out / f"T{t:g}")
        if genotype_signature(other) == genotype_signature(reference):
            calm_ms = min(calm_ms, ms)
    table = LatencyTable.load(out / f"T{targets[0]:g}" / "lut.json")
    est = LatencyEstimator(cfg.space, cfg.data.num_classes, table, cfg.latency.input_size, cfg.latency)
    finals = [Genotype.load(out / f"T{t:g}" / "genotype.json") for t in targets]
    ends = space_range(est, cfg.space, cfg.data.num_classes)
    measured, calm_ref = calm_measure([*finals, *ends], lat, reference, reference_calm_ms=calm_ms, processes=3)
    rows = []
    for t, g, ms in zip(targets, finals, measured):
        rows.append({"target_ms": t, "measured_ms": ms, "error": (ms - t) / t,
                     "predicted_ms": g.predicted_latency_ms, "epoch": g.provenance.get("selected_epoch"),
                     "search_measured_ms": g.provenance.get("measured_latency_ms"),
                     "within_10pct": abs(ms - t) <= 0.1 * t})
    lo, hi = (est.predict(g) for g in ends)
    lo_ms, hi_ms = measured[len(finals):]
    lines = ["| target ms | measured ms | error | in-search measured ms | LUT-predicted ms | chosen epoch | within ±10% |",
             "|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        search_ms = r["search_measured_ms"]
        lines.append(f"| {r['target_ms']:g} | {r['measured_ms']:.2f} | {100 * r['error']:+.1f}% | "
                     f"{search_ms if search_ms is None else round(search_ms, 2)} | "
                     f"{r['predicted_ms']:.2f} | {r['epoch']} | {'yes' if r['within_10pct'] else 'no'} |")
    lines.append(f"\nspace range: {lo:.2f} ms predicted / {lo_ms:.2f} measured (cheapest op everywhere) "
                 f"to {hi:.2f} / {hi_ms:.2f} ms (costliest)")
    env = table.env
    lines.append(f"\ndevice {env.get('device_name')}, {env.get('threads')} threads, input "
                 f"{cfg.latency.input_size[0]}x{cfg.latency.input_size[1]}, re-measured in 3 fresh processes each, 5 rounds beside the reference net (median ratio), calm-phase scale "
                 f"(reference {calm_ref:.2f} ms at its calmest)")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "range_ms": [lo, hi], "range_measured_ms": [lo_ms, hi_ms], "env": env}, indent=2))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if "--measure" in sys.argv:
        p = argparse.ArgumentParser()
        p.add_argument("--measure")
        p.add_argument("--targets")
        p.add_argument("--repeats", type=int)
        p.add_argument("--config")
        p.add_argument("--set", action="append", default=[])
        a = p.parse_args()
        measure(Path(a.measure), [float(t) for t in a.targets.split(",")], a.repeats, a.config, a.set)
    else:
        main()
