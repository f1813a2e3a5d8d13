"""Does the search settle? The shipped recipe's search, with a budget relative to LR-ASPP, per seed.

Stages (each skipped when its output exists, so a rerun continues where it stopped; each timed
stage runs under `--lock`'s exclusive flock):
1. LR-ASPP (`lraspp_mobilenet_v3_large`, random weights) timed at the recipe's latency input size
   (batch 1, `--threads`): the budget is T = `--target-ratio` × its calmest round's median, the
   scale on which a search reports its derived nets' latency.
2. Per seed: `gasnas search --config RECIPE --target-ms T --set seed=S` (printed before it runs).
3. Every searched net and LR-ASPP timed interleaved in one process (rounds of each in turn), so
   the searched/LR-ASPP ratio does not depend on the machine's phase.
Then OUT/summary.json and OUT/summary.md: per seed the final α' spread, the share of kept edges
unchanged over the last 3 epochs, the skip share, the measured latency against the budget, the
search wall time; across seeds the share of kept (cell, edge, op) triples they agree on.

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

CALM_ROUNDS = 7
GOALS = {"alpha_spread_mean": 2.0, "unchanged_last_3_epochs": 0.9, "skip_share_max": 1 / 3,
         "budget_tolerance": 0.10, "seed_agreement": 0.6, "search_minutes": 45}


def time_nets(nets: dict[str, object], size: list[int], threads: int, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Each net's per-round median ms at batch 1, timed in turn for `rounds` rounds (one process)."""
    import torch

    from gasnas.latency.timing import make_runner, time_round_robin

    torch.set_num_threads(threads)
    runners = {name: make_runner(net, size, "torch", "cpu", "fp32", threads) for name, net in nets.items()}
    return time_round_robin(runners, rounds, repeats, warmup=6)


def agreement(genotypes: list[dict]) -> float | None:
    """Mean over seed pairs of the share of kept (cell, source, node, op) they share."""
    sets = [{(k, *map(str, e)) for k, c in enumerate(g["cells"]) for e in c["edges"]} for g in genotypes]
    pairs = [len(a & b) / max(1, min(len(a), len(b))) for a, b in itertools.combinations(sets, 2)]
    return sum(pairs) / len(pairs) if pairs else None


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

    # The budget is on the search's scale: a search reports a derived net's latency in the
    # machine's calmest phase (latency/isolated.py), so LR-ASPP's calmest round sets T, not a
    # median that a slow phase of the machine can inflate by ~1.2x.
    peer_path = out / "lraspp_latency.json"
    if not peer_path.is_file():
        with exclusive(args.lock):
            rounds = time_nets({"lraspp": build_peer("lraspp_mobilenet_v3_large", cfg.data.num_classes).eval()},
                               size, args.threads, rounds=CALM_ROUNDS, repeats=20)["lraspp"]
        peer_path.write_text(json.dumps({"lraspp_ms": min(rounds), "round_medians_ms": rounds,
                                         "input_size": size, "threads": args.threads}))
    lraspp_ms = json.loads(peer_path.read_text())["lraspp_ms"]
    target = round(args.target_ratio * lraspp_ms, 2)
    print(f"LR-ASPP {lraspp_ms:.2f} ms (calmest of {CALM_ROUNDS} rounds) at {size[0]}x{size[1]}; "
          f"budget {target} ms", flush=True)

    seeds = {}
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        done = (run_dir / "genotype.json").is_file()
        cmd = ["gasnas", "search", "--config", args.config, "--target-ms", str(target), "--no-progress",
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
            per_round = time_nets(nets, size, args.threads, rounds=5, repeats=20)
            times_path.write_text(json.dumps({name: statistics.median(v) for name, v in per_round.items()}))
    times = json.loads(times_path.read_text())

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
        ratio = times[f"seed{seed}"] / times["lraspp"]
        rows.append({
            "seed": seed, "alpha_spread_mean": metrics[-1]["alpha_spread_mean"],
            "unchanged_last_3_epochs": g["provenance"].get("unchanged_last_3_epochs"),
            "skip_share": counts.get("skip_connect", 0) / kept, "op_counts": counts,
            "arch_steps": sum(r.get("arch_steps") or 0 for r in metrics),
            "measured_ms_one_run": times[f"seed{seed}"], "lraspp_ms_one_run": times["lraspp"],
            "ratio_to_lraspp": ratio, "within_budget_10pct": abs(ratio / args.target_ratio - 1) <= 0.10,
            "search_wall_min": json.loads((run_dir / "wall_s.json").read_text())["wall_s"] / 60
            if (run_dir / "wall_s.json").is_file() else None,
            "supernet_val_miou_last": metrics[-1]["val_miou"],
        })
    summary = {"config": args.config, "target_ratio": args.target_ratio, "budget_ms": target,
               "lraspp_ms_at_budget_time": lraspp_ms, "seeds": rows, "seed_agreement": agreement(genotypes),
               "goals": GOALS}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Search convergence: `{args.config}`, budget {args.target_ratio} x LR-ASPP ({target} ms)", "",
             "| seed | α' spread | unchanged last 3 ep. | skip share | ms (one run) | / LR-ASPP | search min | arch steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unchanged = r["unchanged_last_3_epochs"]
        lines.append(f"| {r['seed']} | {r['alpha_spread_mean']:.2f} | "
                     f"{'n/a' if unchanged is None else f'{100 * unchanged:.0f}%'} | {100 * r['skip_share']:.0f}% | "
                     f"{r['measured_ms_one_run']:.1f} | {r['ratio_to_lraspp']:.2f} | "
                     f"{r['search_wall_min'] or 0:.1f} | {r['arch_steps']} |")
    if summary["seed_agreement"] is not None:
        lines += ["", f"Seeds agree on {100 * summary['seed_agreement']:.0f}% of kept (cell, edge, op) triples."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
