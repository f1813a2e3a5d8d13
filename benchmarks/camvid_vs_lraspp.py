"""CamVid benchmark: search + train a GAS net, train LR-ASPP with the same recipe and budget,
report val mIoU, CPU latency at 360x480 and wall times side by side.

Every stage is a plain `gasnas` command (printed before it runs), so each step can be rerun by
hand; a stage whose output already exists is skipped, so an interrupted benchmark continues.

    python benchmarks/camvid_vs_lraspp.py [--out runs/camvid-bench] [--search-epochs 10]
        [--warmup-epochs 3] [--train-epochs 12] [--target-ms T] [--set KEY=VALUE ...]
        [--lock /tmp/gasnas-cpu.lock]

Both networks are trained by `gasnas train` (the same loop, data, crops, augmentation, OHEM loss,
poly schedule, optimizer, epochs and evaluation); LR-ASPP is
`lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)`: no ImageNet weights, like ours.
Latency: `gasnas bench --baselines` at 360x480, batch 1, both timed interleaved in one run.
Writes OUT/summary.json and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], lock: str | None) -> float:
    """Run one gasnas command (under an exclusive flock when given); its wall time in s."""
    full = (["flock", "-x", lock] if lock else []) + cmd
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(full, check=True)
    return time.perf_counter() - t0


def best_row(metrics: Path) -> dict:
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    evals = [r for r in rows if r.get("val_miou") is not None]
    return max(evals, key=lambda r: r["val_miou"])


def finished_epochs(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not (run_dir / "last.pt").is_file() or not metrics.is_file():
        return 0
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return int(rows[-1]["epoch"]) if rows else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/camvid-bench")
    ap.add_argument("--config", default="camvid")
    ap.add_argument("--search-epochs", type=int, default=10)
    ap.add_argument("--warmup-epochs", type=int, default=3)
    ap.add_argument("--train-epochs", type=int, default=12)
    ap.add_argument("--target-ms", type=float, default=None,
                    help="search with a latency budget (e.g. below LR-ASPP's latency on this device)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every stage")
    ap.add_argument("--lock", default=None, help="flock file taken exclusively around each stage")
    args = ap.parse_args()
    out = Path(args.out)
    gasnas = [sys.executable, "-m", "gasnas"]
    sets = [f"name={out.name}", f"out_dir={out.parent}", *args.set]
    common = ["-c", args.config, "--no-progress"] + [x for s in sets for x in ("--set", s)]
    summary_path = out / "summary.json"
    walls: dict[str, float] = json.loads(summary_path.read_text())["walls"] if summary_path.is_file() else {}

    genotype = out / "genotype.json"
    if not genotype.is_file():
        resume = ["--resume", str(out)] if (out / "checkpoints").is_dir() else []
        walls["search"] = walls.get("search", 0.0) + run(
            gasnas + ["search", *common, "--set", f"search.epochs={args.search_epochs}",
                      "--set", f"search.warmup_epochs={args.warmup_epochs}", *resume,
                      *(["--target-ms", f"{args.target_ms:g}"] if args.target_ms else [])], args.lock)
    train_sets = ["--set", f"train.epochs={args.train_epochs}",
                  "--set", f"train.eval_every={max(1, args.train_epochs // 4)}"]
    for name, what in (("gasnas", ["-g", str(genotype)]), ("lraspp", ["--peer", "lraspp_mobilenet_v3_large"])):
        run_dir, key = out / f"train-{name}", f"train-{name}"
        if finished_epochs(run_dir) >= args.train_epochs:
            continue
        if (run_dir / "last.pt").is_file():  # interrupted: continue it
            cmd = gasnas + ["train", "--resume", str(run_dir), "--no-progress"]
        else:
            cmd = gasnas + ["train", *what, *common, *train_sets, "--run-dir", str(run_dir)]
        walls[key] = walls.get(key, 0.0) + run(cmd, args.lock)
        summary_path.write_text(json.dumps({"walls": walls}, indent=2))
    bench_json = out / "bench.json"
    walls["bench"] = run(gasnas + ["bench", "--checkpoint", str(out / "train-gasnas" / "best.pt"), "-c", args.config,
                                   "--input", "360x480", "--baselines", "--json", str(bench_json),
                                   "--markdown", str(out / "bench.md")], args.lock)

    bench = json.loads(bench_json.read_text())
    rows = {m["name"]: m for m in bench["models"]}
    summary = {"walls": walls, "config": args.config, "search_epochs": args.search_epochs,
               "train_epochs": args.train_epochs, "sets": args.set, "models": {}}
    for name, label in (("gasnas", bench["reference"]), ("lraspp", "lraspp_mobilenet_v3_large")):
        best = best_row(out / f"train-{name}" / "metrics.jsonl")
        r = rows[label]
        summary["models"][name] = {"val_miou": best["val_miou"], "best_epoch": best["epoch"],
                                   "latency_ms": r["results"]["torch"]["median_ms"],
                                   "params_m": r["params"] / 1e6, "gflops": r["flops"] / 1e9,
                                   "train_wall_s": walls.get(f"train-{name}")}
    lines = ["| model | val mIoU | CPU ms @360x480 (torch, median) | params (M) | GFLOPs | train wall (min) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in summary["models"].items():
        wall = f"{m['train_wall_s'] / 60:.1f}" if m["train_wall_s"] else "-"
        lines.append(f"| {name} | {100 * m['val_miou']:.1f} | {m['latency_ms']:.1f} | {m['params_m']:.2f} | "
                     f"{m['gflops']:.2f} | {wall} |")
    if "search" in walls:
        lines.append(f"\nsearch wall time: {walls['search'] / 60:.1f} min ({args.search_epochs} epochs)")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
