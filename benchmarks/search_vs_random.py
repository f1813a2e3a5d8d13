"""Search vs random: do searched nets beat random nets of the same latency, trained the same way?

Stages (each skipped when its output exists, so an interrupted protocol continues; every `gasnas`
command is printed before it runs and runs under `flock -x LOCK` with `--lock`, and so do the
in-process stages):
  a. searches: `gasnas search -c CONFIG --set name=V-R-sS --set out_dir=OUT --set seed=S ...` per
     GGM variant V × relaxation R (RELAXATIONS) × seed S (variants: adjacent = space.ggm.mode=adjacent, none,
     global, shared = space.alpha_sharing=shared with the adjacent GGM). Every search after the
     first reads the first one's table (latency.lut=OUT/<first>/lut.json; `--no-shared-lut` to
     let each measure its own), so all predicted latencies are in one table's units.
  b. random genotypes: `--random` genotypes drawn uniformly among the derivable ones (at most the
     recipe's search.max_skip_per_cell skips per cell, as derivation keeps) that the first
     search's table predicts within ±`--tolerance` of the searched genotypes' median predicted
     latency (gasnas.space.random_genotypes.sample_matched), OUT/random/random_{i}.json, plus
     OUT/random/cheapest.json (the cheapest derivable net: an anchor). The window is fixed by
     the searches planned when this stage first runs: `--variants adjacent` first, then all
     variants, matches the random nets to the `adjacent` nets (OUT/random/target.json names them).
  c. one proxy training per genotype, and of LR-ASPP (`--peer lraspp_mobilenet_v3_large`), all by
     the same recipe: `gasnas train ... --set train.epochs=E --set data.crop_size=[h,w]`,
     evaluated at the val split's native size (data.eval_size=null); the first searched and the
     first random genotype are trained again with `--set seed=1` ... (training-seed noise).
     Run folders OUT/train/<name>.
  d. every net's batch-1 latency measured in ONE process, round-robin, at the table's input size
     and thread count, the machine's round-to-round drift taken out (a round where every net
     runs slow counts as a slow round, not as slow nets), plus params and GFLOPs: OUT/latency.json.
Report: OUT/summary.json, OUT/summary.md, OUT/mIoU_vs_latency.png: per variant against the
random nets, and the paper's ordering between variants (ORDERING: each pair's Δ, CI and p).

    python benchmarks/search_vs_random.py --config camvid --out runs/search-vs-random \
        --variants adjacent none global shared --relaxations gumbel gdas --seeds-adjacent 3 \
        --seeds-other 2 --random 10 --train-epochs 12 --train-crop 180x240 --retrain-seeds 2 \
        --lock /tmp/gasnas-cpu.lock
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gasnas_cli import run_gasnas, set_flags

from gasnas.config import parse_size
from gasnas.errors import GasnasError
from gasnas.fileio import exclusive_lock as exclusive

VARIANTS: dict[str, list[str]] = {
    "adjacent": ["space.ggm.mode=adjacent"],
    "none": ["space.ggm.mode=none"],
    "global": ["space.ggm.mode=global"],
    "shared": ["space.alpha_sharing=shared", "space.ggm.mode=adjacent"],
}
# how each search relaxes the op choice: the recipe's own sampled search (`gumbel`), DARTS's
# mixture (`softmax`), and GDAS as published (`gdas`: weights on paths drawn from alpha, the
# drawn op's gradient only), the ablation of the pair gradient and uniform weight paths
RELAXATIONS: dict[str, list[str]] = {
    "gumbel": ["search.relaxation=gumbel"],
    "softmax": ["search.relaxation=softmax"],
    "gdas": ["search.relaxation=gumbel", "search.path_gradient=sampled", "search.weight_path=alpha"],
}
PEER = "lraspp_mobilenet_v3_large"
# --quick: every stage at toy size (a smoke test of the protocol, not a measurement)
QUICK_SETS = ["search.epochs=2", "search.warmup_epochs=1", "search.max_steps_per_epoch=2",
              "search.measure_derived=false", "latency.calibrate_samples=0", "latency.warmup=0",
              "latency.repeats=1", "train.max_steps_per_epoch=2", "data.max_train_images=8",
              "data.max_val_images=4"]
DEFAULTS = {"seeds_adjacent": 3, "seeds_other": 2, "random": 10, "train_epochs": 12,
            "train_crop": "180x240", "rounds": 5, "repeats": 20}
QUICK_DEFAULTS = {"seeds_adjacent": 2, "seeds_other": 1, "random": 4, "train_epochs": 1,
                  "train_crop": "64x96", "rounds": 1, "repeats": 1}
GOAL = {"variant": "adjacent", "min_gain_miou": 2.0, "max_p": 0.05, "latency_match": 0.05}
# the paper's claims as pairs (better, worse) of variants searched with the same relaxation:
# independent cells + GGM > independent cells > shared cells, and the adjacent graph vs a global one
ORDERING = [("adjacent", "none"), ("none", "shared"), ("adjacent", "shared"), ("adjacent", "global")]


# --------------------------------------------------------------------------- running stages


def _rows(metrics: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []


def finished_epochs(run_dir: Path) -> int:
    """Epochs a training folder has finished (0 without last.pt)."""
    if not (run_dir / "last.pt").is_file():
        return 0
    return max((int(r["epoch"]) for r in _rows(run_dir / "metrics.jsonl") if "epoch" in r), default=0)


def best_epoch_miou(run_dir: Path) -> tuple[float, int]:
    """(best epoch's val_miou × 100, that epoch) of a training folder."""
    evals = [r for r in _rows(run_dir / "metrics.jsonl") if "epoch" in r and r.get("val_miou") is not None]
    if not evals:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: no evaluated epoch")
    best = max(evals, key=lambda r: (r["val_miou"], -r["epoch"]))
    return 100.0 * float(best["val_miou"]), int(best["epoch"])


def measure_nets(nets: dict[str, str], num_classes: int, size: list[int], threads: int | None,
                 rounds: int, repeats: int) -> dict[str, dict[str, float]]:
    """Batch-1 ms of every net (a genotype.json path, or `peer:NAME`), timed in turn for `rounds`
    rounds in this one process, the round-to-round drift taken out (`ms`,
    latency.timing.drift_corrected; `ms_raw`: the plain median over rounds), with params (M) and
    GFLOPs at `size`."""
    from gasnas.latency.timing import drift_corrected, time_models
    from gasnas.models import build_peer, complexity
    from gasnas.space.derived import DerivedNet
    from gasnas.space.genotype import Genotype

    models = {name: (build_peer(src.split(":", 1)[1], num_classes) if src.startswith("peer:")
                     else DerivedNet(Genotype.load(src))).eval() for name, src in nets.items()}
    sizes = {name: complexity(m, (size[0], size[1])) for name, m in models.items()}
    per = {name: r["torch"]["round_medians_ms"] for name, r in time_models(models, size, ("torch",), threads,
                                                                         rounds, repeats).items()}
    steady = drift_corrected(per)
    return {name: {"ms": steady[name], "ms_raw": statistics.median(per[name]), "round_medians_ms": per[name],
                   "params_m": sizes[name][0] / 1e6, "gflops": sizes[name][1] / 1e9} for name in models}


# --------------------------------------------------------------------------- the protocol


def group_label(variant: str, relax: str, relaxations: list[str]) -> str:
    """A variant's group in the report: its name, with the relaxation when several are searched."""
    return variant if len(relaxations) == 1 else f"{variant}/{relax}"


def plan_searches(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for relax in args.relaxations:
        for variant in args.variants:
            n = args.seeds_adjacent if variant == "adjacent" else args.seeds_other
            for seed in range(n):
                runs.append({"name": f"{variant}-{relax}-s{seed}", "variant": variant, "relaxation": relax,
                             "seed": seed, "group": group_label(variant, relax, args.relaxations)})
    return runs


def stage_searches(args: argparse.Namespace, out: Path, runs: list[dict[str, Any]], common: list[str],
                   walls: dict[str, float]) -> None:
    first_lut = out / runs[0]["name"] / "lut.json"
    user_lut = any(s.startswith("latency.lut=") for s in common)
    for r in runs:
        run_dir = out / r["name"]
        if (run_dir / "genotype.json").is_file():
            continue
        if (run_dir / "checkpoints" / "last.pt").is_file():  # interrupted: continue it
            cmd = ["search", "--resume", str(run_dir), "--no-progress"]
        else:
            sets = [*common, f"name={r['name']}", f"out_dir={out}", f"seed={r['seed']}", *VARIANTS[r["variant"]],
                    *RELAXATIONS[r["relaxation"]]]
            if args.shared_lut and not user_lut and r is not runs[0] and first_lut.is_file():
                sets.append(f"latency.lut={first_lut}")
            cmd = ["search", "-c", args.config, "--no-progress", *set_flags(sets)]
            if args.target_ms:
                cmd += ["--target-ms", f"{args.target_ms:g}"]
            elif args.target_ratio:
                cmd += ["--target-ratio", f"{args.target_ratio:g}"]
        key = f"search:{r['name']}"
        walls[key] = walls.get(key, 0.0) + run_gasnas(cmd, args.lock)
        _save_walls(out, walls)


def stage_random(args: argparse.Namespace, out: Path, runs: list[dict[str, Any]], common: list[str]) -> dict[str, Any]:
    rand_dir = out / "random"
    paths = [rand_dir / f"random_{i}.json" for i in range(args.random)]
    info_path = rand_dir / "target.json"
    if all(p.is_file() for p in paths) and (rand_dir / "cheapest.json").is_file() and info_path.is_file():
        return json.loads(info_path.read_text())
    from gasnas.config import load_config
    from gasnas.fileio import write_json_atomic
    from gasnas.latency import LatencyEstimator, LatencyTable
    from gasnas.space.genotype import Genotype
    from gasnas.space.random_genotypes import cheapest_genotype, sample_matched

    searched = [Genotype.load(out / r["name"] / "genotype.json") for r in runs]
    predicted = [g.predicted_latency_ms for g in searched]
    if any(p is None for p in predicted):
        raise SystemExit("a searched genotype.json records no predicted_latency_ms")
    target = float(statistics.median(predicted))
    lut_path = out / runs[0]["name"] / "lut.json"
    max_skip = load_config(args.config, common).search.max_skip_per_cell  # derivation's cap, as searched
    print(f"# random genotypes: {args.random} within ±{100 * args.tolerance:g}% of {target:.3f} ms "
          f"(median predicted of {len(searched)} searched), at most {max_skip} skips per cell, by {lut_path}",
          flush=True)
    with exclusive(args.lock):  # keys missing from the table would be measured
        table = LatencyTable.load(lut_path)
        est = LatencyEstimator(searched[0].space, searched[0].num_classes, table, None)
        genotypes = sample_matched(est, args.random, target, args.tolerance, seed=args.sample_seed,
                                   max_skip=max_skip)
        cheapest = cheapest_genotype(est, max_skip)
    for p, g in zip(paths, genotypes):
        g.save(p)
    cheapest.save(rand_dir / "cheapest.json")
    info = {"target_ms": target, "tolerance": args.tolerance, "seed": args.sample_seed, "lut": str(lut_path),
            "max_skip_per_cell": max_skip,
            "searched": [r["name"] for r in runs], "searched_predicted_ms": predicted, "cheapest_predicted_ms": cheapest.predicted_latency_ms}
    write_json_atomic(info_path, info)
    return info


def plan_trainings(args: argparse.Namespace, out: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    jobs = [{"name": r["name"], "what": ["--genotype", str(out / r["name"] / "genotype.json")], "seed": None,
             "kind": "searched", "group": r["group"]} for r in runs]
    jobs += [{"name": f"random_{i}", "what": ["--genotype", str(out / "random" / f"random_{i}.json")],
              "seed": None, "kind": "random", "group": "random"} for i in range(args.random)]
    jobs.append({"name": "cheapest", "what": ["--genotype", str(out / "random" / "cheapest.json")], "seed": None,
                 "kind": "cheapest", "group": "cheapest"})
    jobs.append({"name": "lraspp", "what": ["--peer", PEER], "seed": None, "kind": "peer", "group": "lraspp"})
    base = [j for j in jobs if j["kind"] == "searched"][:1] + [j for j in jobs if j["kind"] == "random"][:1]
    for k in range(1, args.retrain_seeds):
        jobs += [{**j, "name": f"{j['name']}-seed{k}", "seed": k, "kind": "retrain", "base": j["name"]} for j in base]
    return jobs


def stage_trainings(args: argparse.Namespace, out: Path, jobs: list[dict[str, Any]], common: list[str],
                    walls: dict[str, float]) -> None:
    try:
        h, w = parse_size(args.train_crop, "--train-crop")
    except GasnasError as exc:
        raise SystemExit(str(exc)) from None
    recipe = [f"train.epochs={args.train_epochs}", f"data.crop_size=[{h},{w}]", "data.eval_size=null",
              f"train.eval_every={max(1, args.train_epochs // 4)}"]
    for job in jobs:
        run_dir = out / "train" / job["name"]
        if finished_epochs(run_dir) >= args.train_epochs:
            continue
        if (run_dir / "last.pt").is_file():  # interrupted: continue it
            cmd = ["train", "--resume", str(run_dir), "--no-progress"]
        else:
            seed = [f"seed={job['seed']}"] if job["seed"] is not None else []
            cmd = ["train", *job["what"], "-c", args.config, "--run-dir", str(run_dir), "--no-progress",
                   *set_flags([*common, *recipe, *seed])]
        key = f"train:{job['name']}"
        walls[key] = walls.get(key, 0.0) + run_gasnas(cmd, args.lock)
        _save_walls(out, walls)


def stage_latency(args: argparse.Namespace, out: Path, runs: list[dict[str, Any]],
                  jobs: list[dict[str, Any]]) -> dict[str, Any]:
    from gasnas.fileio import write_json_atomic
    from gasnas.latency import LatencyTable
    from gasnas.space.genotype import Genotype

    nets = {j["name"]: (f"peer:{PEER}" if j["kind"] == "peer" else j["what"][1])
            for j in jobs if j["kind"] != "retrain"}
    path = out / "latency.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if set(done.get("nets", {})) == set(nets):
            return done
    table = LatencyTable.load(out / runs[0]["name"] / "lut.json")
    first = Genotype.load(out / runs[0]["name"] / "genotype.json")
    size = list(table.input_size or [360, 480])
    threads = args.threads if args.threads is not None else table.env.get("threads")
    print(f"# latency: {len(nets)} nets timed round-robin in one process at {size[0]}x{size[1]}, "
          f"{threads} threads, {args.rounds} rounds x {args.repeats} runs", flush=True)
    t0 = time.perf_counter()
    with exclusive(args.lock):
        measured = measure_nets(nets, first.num_classes, size, threads, args.rounds, args.repeats)
    result = {"input_size": size, "threads": threads, "rounds": args.rounds, "repeats": args.repeats,
              "wall_s": time.perf_counter() - t0, "nets": measured}
    write_json_atomic(path, result)
    return result


def _save_walls(out: Path, walls: dict[str, float]) -> None:
    from gasnas.fileio import write_json_atomic

    write_json_atomic(out / "walls.json", walls)


# --------------------------------------------------------------------------- report


def build_summary(args: argparse.Namespace, out: Path, runs: list[dict[str, Any]], jobs: list[dict[str, Any]],
                  rand_info: dict[str, Any], latency: dict[str, Any], walls: dict[str, float]) -> dict[str, Any]:
    from gasnas.engine.stats import bootstrap_ci, mean_std, percentile_of, permutation_p, smallest_p
    from gasnas.space.genotype import SKIP_OP, Genotype

    nets = []
    for j in jobs:
        if j["kind"] == "retrain":
            continue
        miou, epoch = best_epoch_miou(out / "train" / j["name"])
        lat = latency["nets"][j["name"]]
        predicted = skips = None
        if j["kind"] != "peer":
            genotype = Genotype.load(j["what"][1])
            predicted = genotype.predicted_latency_ms
            skips = genotype.op_counts().get(SKIP_OP, 0)
        nets.append({"name": j["name"], "kind": j["kind"], "group": j["group"], "val_miou": miou, "best_epoch": epoch,
                     "measured_ms": lat["ms"], "predicted_ms": predicted, "params_m": lat["params_m"],
                     "gflops": lat["gflops"], "skips": skips})
    random = [n for n in nets if n["kind"] == "random"]
    r_miou = [n["val_miou"] for n in random]
    r_ms = [n["measured_ms"] for n in random]
    r_median_miou, r_median_ms = statistics.median(r_miou), statistics.median(r_ms)

    def describe(members: list[dict[str, Any]]) -> dict[str, Any]:
        out_: dict[str, Any] = {"n": len(members), "names": [m["name"] for m in members]}
        for key in ("val_miou", "measured_ms", "params_m", "gflops", "skips"):
            mean, std = mean_std([m[key] for m in members])
            out_[key] = {"mean": mean, "std": std}
        return out_

    groups: dict[str, Any] = {}
    for label in dict.fromkeys(r["group"] for r in runs):
        members = [n for n in nets if n["kind"] == "searched" and n["group"] == label]
        miou = [m["val_miou"] for m in members]
        delta, lo, hi = bootstrap_ci(miou, r_miou, seed=0)
        groups[label] = {**describe(members), "delta_vs_random": {"delta": delta, "ci95": [lo, hi]},
                         "p_one_sided": permutation_p(miou, r_miou, seed=0),
                         "p_smallest": smallest_p(len(miou), len(r_miou)),
                         "percentile_among_random": [percentile_of(x, r_miou) for x in miou]}
    noise = []
    for base in dict.fromkeys(j["base"] for j in jobs if j["kind"] == "retrain"):
        names = [base] + [j["name"] for j in jobs if j.get("base") == base]
        values = [best_epoch_miou(out / "train" / n)[0] for n in names]
        noise.append({"genotype": base, "runs": names, "val_miou": values, "abs_delta": max(values) - min(values)})
    ordering = []
    for relax in args.relaxations:
        for better, worse in ORDERING:
            a, b = (group_label(v, relax, args.relaxations) for v in (better, worse))
            if a not in groups or b not in groups:
                continue
            miou_a = [n["val_miou"] for n in nets if n["kind"] == "searched" and n["group"] == a]
            miou_b = [n["val_miou"] for n in nets if n["kind"] == "searched" and n["group"] == b]
            delta, lo, hi = bootstrap_ci(miou_a, miou_b, seed=0)
            ordering.append({"better": a, "worse": b, "delta": delta, "ci95": [lo, hi],
                             "p_one_sided": permutation_p(miou_a, miou_b, seed=0),
                             "p_smallest": smallest_p(len(miou_a), len(miou_b))})
    goal = {}
    for label, g in groups.items():
        if label.split("/")[0] != GOAL["variant"]:
            continue
        members = [n for n in nets if n["kind"] == "searched" and n["group"] == label]
        checks = {
            f"mean_at_least_random_plus_{GOAL['min_gain_miou']:g}": g["delta_vs_random"]["delta"] >= GOAL["min_gain_miou"],
            f"p_below_{GOAL['max_p']:g}": g["p_one_sided"] < GOAL["max_p"],
            "every_seed_above_random_median": all(m["val_miou"] > r_median_miou for m in members),
            f"latency_within_{100 * GOAL['latency_match']:g}pct_of_random_median":
                all(abs(m["measured_ms"] / r_median_ms - 1.0) <= GOAL["latency_match"] for m in members),
        }
        goal[label] = {"checks": checks, "passed": all(checks.values())}
    return {
        "config": args.config, "sets": args.set, "quick": args.quick, "variants": args.variants,
        "relaxations": args.relaxations, "train_epochs": args.train_epochs, "train_crop": args.train_crop,
        "target_ms_search": args.target_ms, "random_target": rand_info,
        "latency": {k: v for k, v in latency.items() if k != "nets"},
        "stages": {"searches": len(runs), "trainings": len(jobs), "nets_timed": len(latency["nets"])},
        "nets": nets,
        "random": {**describe(random), "median_val_miou": r_median_miou, "median_measured_ms": r_median_ms},
        "groups": groups,
        "ordering": ordering,
        "anchors": {n["name"]: n for n in nets if n["kind"] in ("cheapest", "peer")},
        "training_seed_noise": {"pairs": noise,
                                "mean_abs_delta": mean_std([x["abs_delta"] for x in noise])[0]},
        "goal": {"rule": GOAL, "by_group": goal, "passed": bool(goal) and all(v["passed"] for v in goal.values())},
        "scatter": [{"name": n["name"], "kind": n["kind"], "group": n["group"], "ms": n["measured_ms"],
                     "miou": n["val_miou"]} for n in nets],
        "walls_s": walls,
    }


def _pm(stat: dict[str, Any], fmt: str = ".1f") -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:{fmt}}" + (f" ± {stat['std']:{fmt}}" if stat["std"] is not None else "")


def _matched(info: dict[str, Any]) -> str:
    names = info.get("searched")
    return f"{len(names)} searched nets: {', '.join(names)}" if names else "the searched nets"


def _cap(info: dict[str, Any]) -> str:
    cap = info.get("max_skip_per_cell")
    return f" (at most {cap} skip{'s' if cap != 1 else ''} per cell)" if cap is not None else ""


def write_markdown(path: Path, s: dict[str, Any]) -> None:
    from gasnas.fileio import write_text_atomic

    lat = s["latency"]
    lines = [f"# Search vs random: `{s['config']}`, proxy training {s['train_epochs']} epochs at "
             f"{s['train_crop']} crops", "",
             f"Random nets: {s['random']['n']} drawn uniformly among derivable nets"
             f"{_cap(s['random_target'])} within ±{100 * s['random_target']['tolerance']:g}% "
             f"of {s['random_target']['target_ms']:.2f} ms predicted (the median of "
             f"{_matched(s['random_target'])}). Latency: "
             f"batch 1 at {lat['input_size'][0]}x{lat['input_size'][1]}, {lat['threads']} threads, all nets "
             "round-robin in one process.", "",
             "| nets | n | val mIoU | measured ms | params (M) | GFLOPs | skips | Δ mIoU vs random [95% CI] "
             "| p (one-sided) [smallest possible] | percentile among random |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, g in s["groups"].items():
        d = g["delta_vs_random"]
        lines.append(f"| {label} | {g['n']} | {_pm(g['val_miou'])} | {_pm(g['measured_ms'])} | "
                     f"{_pm(g['params_m'], '.2f')} | {_pm(g['gflops'], '.3g')} | {_pm(g['skips'])} | {d['delta']:+.1f} "
                     f"[{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}] | {g['p_one_sided']:.3g} [{g['p_smallest']:.2g}] | "
                     f"{', '.join(f'{p:.0f}' for p in g['percentile_among_random'])} |")
    r = s["random"]
    lines.append(f"| random | {r['n']} | {_pm(r['val_miou'])} | {_pm(r['measured_ms'])} | {_pm(r['params_m'], '.2f')} | "
                 f"{_pm(r['gflops'], '.3g')} | {_pm(r['skips'])} | | | median mIoU {r['median_val_miou']:.1f} |")
    for name, a in s["anchors"].items():
        lines.append(f"| {name} | 1 | {a['val_miou']:.1f} | {a['measured_ms']:.1f} | {a['params_m']:.2f} | "
                     f"{a['gflops']:.3g} | {'-' if a['skips'] is None else a['skips']} | | | |")
    noise = s["training_seed_noise"]
    if noise["pairs"]:
        lines += ["", "Training-seed noise (same genotype, another training seed): " + "; ".join(
            f"{p['genotype']} |Δ| {p['abs_delta']:.1f}" for p in noise["pairs"])
            + f" (mean {noise['mean_abs_delta']:.1f} mIoU)."]
    if s["ordering"]:
        lines += ["", "The paper's ordering, searched nets against searched nets (Δ mIoU of the first minus the "
                  "second, bootstrap 95% CI, one-sided permutation p of the first being better, and the "
                  "smallest p those group sizes allow):", ""]
        lines += [f"- {o['better']} > {o['worse']}: {o['delta']:+.1f} [{o['ci95'][0]:+.1f}, {o['ci95'][1]:+.1f}], "
                  f"p = {o['p_one_sided']:.3g} (smallest possible {o['p_smallest']:.2g})" for o in s["ordering"]]
    goal = s["goal"]
    lines += ["", f"Goal ({goal['rule']['variant']}): mean ≥ random mean + {goal['rule']['min_gain_miou']:g} mIoU, "
              f"p < {goal['rule']['max_p']:g}, every seed above the random median, measured latency within "
              f"±{100 * goal['rule']['latency_match']:g}% of the random median: "
              f"**{'met' if goal['passed'] else 'not met'}**"]
    for label, g in goal["by_group"].items():
        lines += [f"- {label}: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in g["checks"].items())]
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_scatter(path: Path, s: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gasnas.fileio import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    pts = s["scatter"]
    rand = [p for p in pts if p["kind"] == "random"]
    ax.scatter([p["ms"] for p in rand], [p["miou"] for p in rand], c="0.6", s=28, label="random (matched)")
    markers = "ovs^DPX<>"
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    for i, label in enumerate(s["groups"]):  # red is the peer's, black the anchor's
        g = [p for p in pts if p["kind"] == "searched" and p["group"] == label]
        ax.scatter([p["ms"] for p in g], [p["miou"] for p in g], marker=markers[i % len(markers)], s=46,
                   c=colours[i % len(colours)], label=f"searched: {label}", zorder=3)
    for p in pts:
        if p["kind"] == "cheapest":
            ax.scatter([p["ms"]], [p["miou"]], marker="x", c="k", s=50, label="cheapest ops", zorder=3)
        elif p["kind"] == "peer":
            ax.scatter([p["ms"]], [p["miou"]], marker="*", c="tab:red", s=140, label="LR-ASPP", zorder=3)
    ax.set_xlabel("measured latency (ms, batch 1)")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="camvid")
    ap.add_argument("--out", default="runs/search-vs-random")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--relaxations", nargs="+", choices=sorted(RELAXATIONS), default=["gumbel"])
    ap.add_argument("--seeds-adjacent", type=int, default=None, help=f"default {DEFAULTS['seeds_adjacent']}")
    ap.add_argument("--seeds-other", type=int, default=None, help=f"default {DEFAULTS['seeds_other']}")
    ap.add_argument("--random", type=int, default=None, help=f"random genotypes (default {DEFAULTS['random']})")
    ap.add_argument("--tolerance", type=float, default=0.03, help="latency window of the random nets (relative)")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--train-epochs", type=int, default=None, help=f"default {DEFAULTS['train_epochs']}")
    ap.add_argument("--train-crop", default=None, help=f"HxW (default {DEFAULTS['train_crop']})")
    ap.add_argument("--retrain-seeds", type=int, default=2,
                    help="training seeds of the first searched and first random genotype (1: no retraining)")
    ap.add_argument("--target-ms", type=float, default=None, help="latency budget passed to every search")
    ap.add_argument("--target-ratio", type=float, default=None,
                    help="latency budget of every search as a fraction of LR-ASPP's latency, timed by the search")
    ap.add_argument("--no-shared-lut", dest="shared_lut", action="store_false",
                    help="let every search measure its own table")
    ap.add_argument("--threads", type=int, default=None, help="timing threads (default: the table's)")
    ap.add_argument("--rounds", type=int, default=None, help=f"timing rounds (default {DEFAULTS['rounds']})")
    ap.add_argument("--repeats", type=int, default=None, help=f"timed runs per round (default {DEFAULTS['repeats']})")
    ap.add_argument("--quick", action="store_true", help="toy settings everywhere: a smoke test, not a result")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, every stage")
    ap.add_argument("--lock", default=None, help="flock file taken exclusively around each stage")
    args = ap.parse_args(argv)
    for key, value in (QUICK_DEFAULTS if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds_adjacent < (1 if "adjacent" in args.variants else 0) or args.seeds_other < 0 or args.random < 2:
        ap.error("need at least one adjacent seed (if searched) and two random genotypes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = (QUICK_SETS if args.quick else []) + list(args.set)
    walls: dict[str, float] = json.loads((out / "walls.json").read_text()) if (out / "walls.json").is_file() else {}
    runs = plan_searches(args)
    if not runs:
        raise SystemExit("no searches planned (check --variants and the seed counts)")
    stage_searches(args, out, runs, common, walls)
    rand_info = stage_random(args, out, runs, common)
    jobs = plan_trainings(args, out, runs)
    stage_trainings(args, out, jobs, common, walls)
    latency = stage_latency(args, out, runs, jobs)
    summary = build_summary(args, out, runs, jobs, rand_info, latency, walls)
    from gasnas.fileio import write_json_atomic

    write_json_atomic(out / "summary.json", summary)
    write_markdown(out / "summary.md", summary)
    plot_scatter(out / "mIoU_vs_latency.png", summary)
    print((out / "summary.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
