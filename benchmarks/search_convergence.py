"""Does the search settle? The shipped recipe's search, with a budget relative to LR-ASPP, per seed.

Stages (each skipped when its output exists, so a rerun continues where it stopped; each timed
stage runs under `--lock`'s exclusive flock):
1. Per seed: `gasnas search --config RECIPE --target-ratio R --set seed=S` (printed before it
   runs): the search times LR-ASPP (`lraspp_mobilenet_v3_large`, random weights) beside each
   derived net and keeps it within R x LR-ASPP's latency on that scale (latency.target_ratio).
2. Every searched net and LR-ASPP timed interleaved in one process (15 rounds of each in turn);
   the searched/LR-ASPP ratio is the median over rounds of the ratio within a round
   (latency.timing.paired_ratio), so it does not depend on the machine's phase.
Then OUT/summary.json and OUT/summary.md: per seed the final α' spread, the share of kept edges
unchanged over the last 3 epochs, the skip share, the latency against the budget (in the search,
and as a ratio to LR-ASPP in one run), the search wall time; across seeds the share of kept
(cell, edge, op) triples they agree on, beside two references: the share of kept (cell, edge)
pairs they agree on whatever the op, and the agreement of a cell with the *other* cells of its
stage and type in the other seeds (what agreement without cell-specific information looks like).

    python benchmarks/search_convergence.py --config camvid --seeds 0 1 2 --target-ratio 0.8 \
        --out runs/search-convergence --lock /tmp/gasnas-cpu.lock

with any number of `--set key=value` passed on to every search.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gasnas.fileio import exclusive_lock as exclusive
from gasnas.latency.timing import paired_ratio, time_models

GOALS = {"alpha_spread_mean": 2.0, "unchanged_last_3_epochs": 0.9, "skip_share_max": 1 / 3,
         "budget_tolerance": 0.10, "seed_agreement": 0.6, "search_minutes": 45}


def time_nets(nets: dict[str, object], size: list[int], threads: int, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Each net's per-round median ms at batch 1, timed in turn for `rounds` rounds (one process)."""
    timed = time_models(nets, size, ("torch",), threads, rounds, repeats, warmup=6)
    return {name: r["torch"]["round_medians_ms"] for name, r in timed.items()}


def _triples(g: dict, cells: list[int | None] | None = None, with_op: bool = True) -> set[tuple]:
    """Kept (position, source, node[, op]) of the genotype's cells (`cells`: which cell each
    position reads, default itself; None leaves the position out)."""
    order = cells if cells is not None else list(range(len(g["cells"])))
    return {(k, *map(str, e[:3] if with_op else e[:2]))
            for k, c in enumerate(order) if c is not None for e in g["cells"][c]["edges"]}


def _mean_pairs(sets: list[tuple[set, set]]) -> float | None:
    shares = [len(a & b) / max(1, min(len(a), len(b))) for a, b in sets]
    return sum(shares) / len(shares) if shares else None


def agreement(genotypes: list[dict], with_op: bool = True) -> float | None:
    """Mean over seed pairs of the share of kept (cell, source, node, op) they share (without the
    op: of kept edges)."""
    sets = [_triples(g, with_op=with_op) for g in genotypes]
    return _mean_pairs(list(itertools.combinations(sets, 2)))


def cross_cell_agreement(genotypes: list[dict]) -> float | None:
    """The same share when each cell of one seed is compared with another cell of the same
    stage and type (reduction or not) in the other seed: every cyclic shift within those groups.
    Cells that share no cell-specific information agree about as often as this. Cells alone in
    their group (the reduction cells) are left out."""
    from gasnas.space.genotype import Genotype
    from gasnas.space.network import plan_cells

    groups: dict[tuple[int, bool], list[int]] = {}
    for k, plan in enumerate(plan_cells(Genotype.from_dict(genotypes[0]).space)):
        groups.setdefault((plan.stage, plan.reduction), []).append(k)
    shared = [k for members in groups.values() if len(members) > 1 for k in members]
    own: list[int | None] = [k if k in shared else None for k in range(len(genotypes[0]["cells"]))]
    pairs = []
    for shift in range(1, max(len(v) for v in groups.values())):
        order = list(own)
        for members in groups.values():
            for i, k in enumerate(members):
                order[k] = members[(i + shift) % len(members)] if len(members) > 1 else None
        for a, b in itertools.permutations(genotypes, 2):
            pairs.append((_triples(a, own), _triples(b, order)))
    return _mean_pairs(pairs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="camvid")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target-ratio", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/search-convergence"))
    ap.add_argument("--lock", default=None)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    from gasnas.config import load_config
    from gasnas.models import build_peer

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, args.overrides)
    size = list(cfg.latency.input_size)

    seeds = {}
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        done = (run_dir / "genotype.json").is_file()
        cmd = ["gasnas", "search", "--config", args.config, "--target-ratio", f"{args.target_ratio:g}", "--no-progress",
               "--set", f"seed={seed}", "--set", f"out_dir={out}", "--set", f"name=seed{seed}",
               "--set", f"latency.threads={args.threads}", *itertools.chain.from_iterable(("--set", o) for o in args.overrides)]
        if (run_dir / "checkpoints/last.pt").is_file() and not done:
            cmd = ["gasnas", "search", "--config", str(run_dir / "config.yaml"), "--resume", str(run_dir), "--no-progress"]
        timing = run_dir / "wall_s.json"
        if not done:
            print("$ " + shlex.join(cmd), flush=True)
            with exclusive(args.lock):
                t0 = time.perf_counter()
                try:
                    subprocess.run(cmd, check=True)
                finally:  # an interrupted search's time counts too: its rerun continues from its checkpoint
                    prev = json.loads(timing.read_text())["wall_s"] if timing.is_file() else 0.0
                    if run_dir.is_dir():
                        timing.write_text(json.dumps({"wall_s": prev + time.perf_counter() - t0}))
        seeds[seed] = run_dir

    times_path = out / "latency_one_run.json"
    if not times_path.is_file():
        from gasnas.space.derived import DerivedNet
        from gasnas.space.genotype import Genotype

        nets = {"lraspp": build_peer("lraspp_mobilenet_v3_large", cfg.data.num_classes).eval()}
        for seed, run_dir in seeds.items():
            nets[f"seed{seed}"] = DerivedNet(Genotype.load(run_dir / "genotype.json")).eval()
        with exclusive(args.lock):
            per_round = time_nets(nets, size, args.threads, rounds=15, repeats=20)
            times_path.write_text(json.dumps(per_round))
    # per net its round medians (an older file: one median per net)
    rounds = json.loads(times_path.read_text())
    times = {n: statistics.median(v) if isinstance(v, list) else v for n, v in rounds.items()}

    rows, genotypes = [], []
    for seed, run_dir in seeds.items():
        g = json.loads((run_dir / "genotype.json").read_text())
        genotypes.append(g)
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        counts: dict[str, int] = {}
        for c in g["cells"]:
            for *_, op in c["edges"]:
                counts[op] = counts.get(op, 0) + 1
        kept = sum(counts.values())
        mine, peer = rounds[f"seed{seed}"], rounds["lraspp"]
        # the median over rounds of the ratio within a round (latency.timing.paired_ratio)
        ratio = (paired_ratio(mine, peer)["median"] if isinstance(mine, list) and isinstance(peer, list)
                 else times[f"seed{seed}"] / times["lraspp"])
        prov = g["provenance"]
        target, in_search = prov.get("target_ms"), prov.get("measured_latency_ms")
        rows.append({
            "seed": seed, "alpha_spread_mean": metrics[-1]["alpha_spread_mean"],
            "unchanged_last_3_epochs": g["provenance"].get("unchanged_last_3_epochs"),
            "skip_share": counts.get("skip_connect", 0) / kept, "op_counts": counts,
            "arch_steps": sum(r.get("arch_steps") or 0 for r in metrics),
            "measured_ms_one_run": times[f"seed{seed}"], "lraspp_ms_one_run": times["lraspp"],
            "ratio_to_lraspp": ratio, "within_budget_10pct": abs(ratio / args.target_ratio - 1) <= 0.10,
            "budget_ms": target, "measured_ms_in_search": in_search,
            "in_search_vs_budget": in_search / target - 1 if target and in_search else None,
            "argmax_predicted_ms": metrics[-1].get("argmax_predicted_ms"), "predicted_ms": metrics[-1].get("predicted_ms"),
            "budget_swaps_last": metrics[-1].get("budget_swaps"),
            "search_wall_min": json.loads((run_dir / "wall_s.json").read_text())["wall_s"] / 60
            if (run_dir / "wall_s.json").is_file() else None,
            "supernet_val_miou_last": metrics[-1]["val_miou"],
        })
    summary = {"config": args.config, "target_ratio": args.target_ratio, "seeds": rows,
               "seed_agreement": agreement(genotypes), "edge_agreement": agreement(genotypes, with_op=False),
               "cross_cell_agreement": cross_cell_agreement(genotypes) if len(genotypes) > 1 else None,
               "goals": GOALS}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Search convergence: `{args.config}`, budget {args.target_ratio} x LR-ASPP", "",
             "| seed | α' spread | unchanged last 3 ep. | skip share | in the search vs T | ms (one run) | / LR-ASPP "
             "| search min | arch steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unchanged, vs = r["unchanged_last_3_epochs"], r["in_search_vs_budget"]
        lines.append(f"| {r['seed']} | {r['alpha_spread_mean']:.2f} | "
                     f"{'n/a' if unchanged is None else f'{100 * unchanged:.0f}%'} | {100 * r['skip_share']:.0f}% | "
                     f"{'n/a' if vs is None else f'{100 * vs:+.1f}%'} | "
                     f"{r['measured_ms_one_run']:.1f} | {r['ratio_to_lraspp']:.2f} | "
                     f"{r['search_wall_min'] or 0:.1f} | {r['arch_steps']} |")
    if summary["seed_agreement"] is not None:
        lines += ["", f"Seeds agree on {100 * summary['seed_agreement']:.0f}% of kept (cell, edge, op) triples "
                      f"and on {100 * summary['edge_agreement']:.0f}% of kept edges; a cell against the other "
                      f"cells of its stage and type: {100 * (summary['cross_cell_agreement'] or 0):.0f}%."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
