"""GGM ablation at matched latency: search with the GGM (`adjacent`) and without it (`none`), and
pick a random genotype of the same predicted latency; train all three with one recipe.

Both searches use `--target-ms T` (λ adapted from the measured latency, so they land near the
same latency) and share one latency table. The random genotype is the one, among 200 sampled
over the space's latency range (latency/sampling.py), whose predicted latency is closest to the
`adjacent` genotype's. Each genotype is trained by `gasnas train` with the same recipe, epochs
and seed, and re-measured for latency.

    python benchmarks/ggm_ablation.py [--config demo] [--target-ms 10] [--train-epochs 40]
        [--out runs/ggm-ablation] [--set KEY=VALUE ...] [--lock /tmp/gasnas-cpu.lock]

Writes OUT/summary.json and OUT/summary.md. A stage whose output exists is skipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str], lock: str | None) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run((["flock", "-x", lock] if lock else []) + cmd, check=True)


def random_at_latency(out: Path, config: str, sets: list[str], target_ms: float, seed: int = 0) -> Path:
    """The sampled genotype whose predicted latency is closest to `target_ms`."""
    from gasnas.config import load_config
    from gasnas.latency import LatencyEstimator, LatencyTable
    from gasnas.latency.sampling import spanning_genotypes

    cfg = load_config(config, sets)
    table = LatencyTable.load(out / "adjacent" / "lut.json")
    est = LatencyEstimator(cfg.space, cfg.data.num_classes, table, cfg.latency.input_size, cfg.latency)
    best = min(spanning_genotypes(est, 200, seed=seed), key=lambda g: abs(est.predict(g) - target_ms))
    best.predicted_latency_ms = est.predict(best)
    best.provenance = {"source": "random (latency/sampling.py spanning_genotypes, seed 0)",
                       "matched_to_ms": target_ms}
    path = out / "random" / "genotype.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    best.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--target-ms", type=float, default=10.0)
    ap.add_argument("--train-epochs", type=int, default=40)
    ap.add_argument("--out", default="runs/ggm-ablation")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--lock", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    gasnas = [sys.executable, "-m", "gasnas"]
    genotypes: dict[str, Path] = {}
    for mode in ("adjacent", "none"):
        sets = [f"name={mode}", f"out_dir={out}", f"space.ggm.mode={mode}", *args.set]
        if mode == "none":
            sets.append(f"latency.lut={out / 'adjacent' / 'lut.json'}")
        if not (out / mode / "genotype.json").is_file():
            run(gasnas + ["search", "-c", args.config, "--target-ms", f"{args.target_ms:g}", "--no-progress"]
                + [x for s in sets for x in ("--set", s)], args.lock)
        genotypes[mode] = out / mode / "genotype.json"
    from gasnas.space.genotype import Genotype

    adjacent_ms = Genotype.load(genotypes["adjacent"]).predicted_latency_ms
    genotypes["random"] = (out / "random" / "genotype.json" if (out / "random" / "genotype.json").is_file()
                           else random_at_latency(out, args.config, args.set, adjacent_ms))
    for name, g in genotypes.items():
        run_dir = out / name / "train"
        if not (run_dir / "best.pt").is_file() or not (run_dir / "last.pt").is_file():
            run(gasnas + ["train", "-g", str(g), "-c", args.config, "--run-dir", str(run_dir), "--no-progress",
                          "--set", f"train.epochs={args.train_epochs}",
                          "--set", f"train.eval_every={max(1, args.train_epochs // 4)}"]
                + [x for s in args.set for x in ("--set", s)], args.lock)
    cmd = [sys.executable, __file__, "--report", str(out), "--config", args.config] + \
        [x for s in args.set for x in ("--set", s)]
    run(cmd, args.lock)


def report(out: Path, config: str, sets: list[str]) -> None:
    """Re-measure each genotype's latency the way the searches measure (fresh processes, beside
    the `adjacent` search's reference net, on its calm-phase scale: latency/isolated.py) and
    tabulate."""
    from gasnas.config import load_config
    from gasnas.engine.search import calm_reference
    from gasnas.latency.isolated import calm_measure
    from gasnas.space.genotype import Genotype

    cfg = load_config(config, sets)
    names = ("adjacent", "none", "random")
    genotypes = [Genotype.load(out / name / "genotype.json") for name in names]
    reference, calm_ms = calm_reference(out / "adjacent")
    measured, _ = calm_measure(genotypes, cfg.latency, reference, reference_calm_ms=calm_ms, processes=3)
    rows = {}
    for name, g, ms in zip(names, genotypes, measured):
        metrics = [json.loads(x) for x in (out / name / "train" / "metrics.jsonl").read_text().splitlines() if x]
        best = max((r for r in metrics if r.get("val_miou") is not None), key=lambda r: r["val_miou"])
        rows[name] = {"val_miou": best["val_miou"], "epoch": best["epoch"], "predicted_ms": g.predicted_latency_ms,
                      "measured_ms": ms}
    lines = ["| genotype | val mIoU | measured ms | predicted ms |", "|---|---:|---:|---:|"]
    labels = {"adjacent": "search, GGM adjacent", "none": "search, GGM none", "random": "random, matched latency"}
    for name, r in rows.items():
        lines.append(f"| {labels[name]} | {100 * r['val_miou']:.1f} | {r['measured_ms']:.2f} | {r['predicted_ms']:.2f} |")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if "--report" in sys.argv:
        p = argparse.ArgumentParser()
        p.add_argument("--report")
        p.add_argument("--config")
        p.add_argument("--set", action="append", default=[])
        a = p.parse_args()
        report(Path(a.report), a.config, a.set)
    else:
        main()
