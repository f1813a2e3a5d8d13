"""`gasnas demo`: the whole pipeline, offline, on embedded synthetic street scenes.

synthesise data (if absent) → latency table → search (supernet + GGM + latency loss) → derive →
train the derived net → evaluate → benchmark against torchvision peers → runs/demo/report.md.
Every stage is the same code the individual commands run; the demo only chains them. The CLI
registers this module's command at start-up, so its heavy imports wait inside the functions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from gasnas.config import Config, load_config

# What `--quick` changes: tiny everything, so the test suite can run the whole chain in seconds.
QUICK_OVERRIDES = [
    "name=demo-quick",
    "data.synth_n_train=8", "data.synth_n_val=4", "data.synth_size=[48, 64]",
    "data.crop_size=[48, 64]",
    "space.stem_channels=[4, 4, 8]", "space.stage_channels=[8, 16, 16]",
    "space.cells_per_stage=[1, 1, 1]", "space.head_channels=8", "space.detail_channels=[4]",
    "latency.input_size=[48, 64]", "latency.warmup=0", "latency.repeats=1",
    "search.epochs=1", "search.warmup_epochs=0", "search.batch_size=4",
    "train.epochs=1", "train.batch_size=4", "train.eval_every=1", "train.ohem_min_kept=100",
    "bench.input_size=[48, 64]", "bench.warmup=0", "bench.runs=1",
]

# The report also gives the mIoU with flip + these input scales (+1.3-1.6 with an earlier recipe;
# the 1.5x scale alone now costs, being a smoothing resample: docs/results.md).
TTA_SCALES = (1.0, 1.5)


def demo_config(recipe: str, overrides: list[str], quick: bool, out_dir: str | None) -> Config:
    extra = list(QUICK_OVERRIDES) if quick else []
    if out_dir:
        extra.append(f"out_dir={out_dir}")
    cfg = load_config(recipe, extra + list(overrides))
    if quick and not any(o.startswith("data.root=") for o in overrides):
        cfg.data.root = str(Path(cfg.out_dir) / "demo-quick-data")
    return cfg


def _fmt(v: Any, nd: int = 2) -> str:
    return "n/a" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _logit_adjust_rows(meta: dict) -> list[str]:
    """The report's line on `train.logit_adjust` when the run did it."""
    rec = meta.get("logit_adjust")
    if not rec:
        return []
    before = rec.get("val_miou_before")
    return [f"| logit adjustment (τ chosen on {rec['calibration_images']} training images) | τ = {rec['tau']}; "
            f"val mIoU without it {_fmt(None if before is None else before * 100, 1)} |"]


def _measured_ms(genotype: Any, cfg: Config, run_dir: Path) -> float:
    """The derived net's latency on the search's calm-phase scale: timed in a fresh process
    beside the search's reference net, scaled by the reference's calmest timing of the search
    (latency/isolated.py); a single timing would measure the machine's speed phase as much as the
    net (one run read 26.8 ms for a net the search measured at 17.2). Without a search
    reference: one fresh-process timing."""
    from gasnas.engine.search import calm_reference
    from gasnas.errors import GasnasError
    from gasnas.latency.isolated import calm_measure, measure_genotype_isolated

    rounds = cfg.search.measure_rounds  # as the search timed its derived nets
    try:
        reference, reference_ms = calm_reference(run_dir)
    except GasnasError:
        return measure_genotype_isolated(genotype, cfg.latency, rounds=rounds).ms
    (ms,), _ = calm_measure([genotype], cfg.latency, reference, rounds=rounds, reference_calm_ms=reference_ms)
    return ms


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def run_demo(cfg: Config, with_peers: bool = True, show_progress: bool = True) -> Path:
    """Run every stage and write `run_dir/report.md`; returns its path."""
    import torch
    from torch.utils.data import DataLoader

    from gasnas.data import build_dataset, class_names, denormalize, ensure_synthetic, palette
    from gasnas.deploy.bench import BenchModel, markdown_table, run_bench
    from gasnas.engine.evaluate import evaluate
    from gasnas.engine.search import CHECKPOINT as SEARCH_CKPT
    from gasnas.engine.search import run_search
    from gasnas.engine.train import LAST as TRAIN_LAST
    from gasnas.engine.train import run_train
    from gasnas.fileio import write_json_atomic, write_text_atomic
    from gasnas.models import build_peer
    from gasnas.space.complexity import count_flops, count_params
    from gasnas.space.derived import load_derived_checkpoint
    from gasnas.space.genotype import Genotype
    from gasnas.viz import plot_predictions

    run_dir = cfg.run_dir
    stages: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str) -> None:
        stages[name] = time.perf_counter()
        print(f"\n== gasnas demo: {name} ==", flush=True)

    def done(name: str) -> None:
        stages[name] = time.perf_counter() - stages[name]

    stage("data")
    root = ensure_synthetic(cfg.data, progress=show_progress)
    print(f"synthetic street scenes at {root}")
    done("data")

    # A demo run that was interrupted (or finished) continues instead of starting over.
    search_resume = run_dir if (run_dir / SEARCH_CKPT).is_file() else None
    train_dir = run_dir / "train"
    train_resume = train_dir if (train_dir / TRAIN_LAST).is_file() else None
    if search_resume or train_resume:
        print(f"continuing the earlier demo run in {run_dir} (use --set name=NEW to start afresh)")

    stage("search")
    genotype_path = Path(run_search(cfg, search_resume, show_progress=show_progress))
    genotype = Genotype.load(genotype_path)
    done("search")

    stage("train")
    best = Path(run_train(cfg, genotype_path, train_resume, show_progress=show_progress))
    done("train")

    stage("eval")
    model, meta = load_derived_checkpoint(best)
    model.eval()
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    names = class_names(cfg.data)
    metrics = evaluate(model, DataLoader(val, batch_size=1), cfg.data.num_classes,
                       cfg.data.ignore_index, class_names=names)
    tta = evaluate(model, DataLoader(val, batch_size=1), cfg.data.num_classes, cfg.data.ignore_index,
                   flip=True, scales=TTA_SCALES, class_names=names)
    pal = palette(cfg.data)
    samples = [val[i] for i in range(min(4, len(val)))]
    with torch.no_grad():
        preds = [model(img[None]).argmax(1)[0].numpy() for img, _ in samples]
    images = [(denormalize(img).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype("uint8") for img, _ in samples]
    plot_predictions(images, [lab.numpy() for _, lab in samples], preds, pal, run_dir / "predictions.png")
    done("eval")

    stage("latency")
    predicted = genotype.predicted_latency_ms
    measured = _measured_ms(genotype, cfg, run_dir)
    done("latency")

    stage("bench")
    size = tuple(cfg.bench.input_size)
    bench_models = [BenchModel("gasnas (derived)", model, count_params(model), count_flops(model, size),
                               str(genotype_path), reference=True)]
    if with_peers:
        for peer in ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"):
            net = build_peer(peer, cfg.data.num_classes)
            bench_models.append(BenchModel(peer, net, count_params(net), count_flops(net, size), "torchvision"))
    bench = run_bench(bench_models, size, ["torch"], cfg.bench.device, cfg.bench.dtype,
                      cfg.bench.threads, cfg.bench.warmup, cfg.bench.runs, progress=show_progress)
    write_json_atomic(run_dir / "bench.json", bench)
    done("bench")
    total = time.perf_counter() - t_all

    per_class = "\n".join(f"| {n} | {_fmt(None if v != v else v * 100, 1)} |"
                          for n, v in zip(metrics["class_names"], metrics["iou"]))
    train_dir = best.parent.parent if best.parent.name == "checkpoints" else best.parent
    lines = [
        f"# gasnas demo report — {cfg.name}",
        "",
        "Everything below was produced by one `gasnas demo` run on this machine, offline, on the",
        "embedded synthetic street scenes. GAS parts that the paper does not pin down are",
        "reconstructed (docs/method.md).",
        "",
        "## Result",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| val mIoU (synthetic, {len(val)} images) | {metrics['miou'] * 100:.1f} |",
        f"| val mIoU with flip + scales {', '.join(map(str, TTA_SCALES))} (test-time augmentation) | {tta['miou'] * 100:.1f} |",
        f"| pixel accuracy | {metrics['pixel_acc'] * 100:.1f} |",
        *_logit_adjust_rows(meta),
        f"| predicted latency (LUT, {cfg.latency.input_size[0]}x{cfg.latency.input_size[1]}) | {_fmt(predicted)} ms |",
        f"| measured latency (same size, {cfg.latency.device}) | {measured:.2f} ms |",
        f"| params | {count_params(model) / 1e6:.3f} M |",
        f"| FLOPs at {size[0]}x{size[1]} | {count_flops(model, size) / 1e9:.3f} G |",
        f"| search: final α' spread (log p_max/p_min; ≥ 2.0 is settled) | {_fmt(genotype.provenance.get('alpha_spread_mean'))} |",
        f"| search: kept edges unchanged over the last 3 epochs | {_fmt(_pct(genotype.provenance.get('unchanged_last_3_epochs')), 0)}% |",
        f"| total wall time | {total / 60:.1f} min |",
        "",
        "## Searched cells",
        "",
        "![cells](plots/genotype.png)" if (run_dir / "plots" / "genotype.png").exists() else f"genotype: `{genotype_path}`",
        "",
        "## Search and training curves",
        "",
        *[f"![{p.stem}]({p.relative_to(run_dir)})" for p in sorted(run_dir.glob("**/*.png"))
          if p.parent != run_dir and p.name != "genotype.png"],
        "",
        "## Per-class IoU (val)",
        "",
        "| class | IoU |",
        "| --- | --- |",
        per_class,
        "",
        "## Predictions (image | ground truth | prediction)",
        "",
        "![predictions](predictions.png)",
        "",
        f"## Speed at {size[0]}x{size[1]}, batch 1, {cfg.bench.device}",
        "",
        markdown_table(bench),
        "",
        "## Stage wall times",
        "",
        "| stage | seconds |",
        "| --- | --- |",
        *[f"| {k} | {v:.1f} |" for k, v in stages.items()],
        "",
        f"Genotype: `{genotype_path}`; best checkpoint: `{best}`; training run: `{train_dir}`.",
        "",
    ]
    report = write_text_atomic(run_dir / "report.md", "\n".join(lines))
    write_json_atomic(run_dir / "demo.json", {
        "miou": metrics["miou"], "miou_tta": tta["miou"], "pixel_acc": metrics["pixel_acc"], "predicted_ms": predicted,
        "measured_ms": measured, "stages_s": stages, "total_s": total,
        "genotype": str(genotype_path), "checkpoint": str(best)})
    print(f"\nmIoU {metrics['miou'] * 100:.1f} | latency predicted {_fmt(predicted)} ms, measured "
          f"{measured:.2f} ms | {total / 60:.1f} min\nreport: {report}")
    return report


def _run(args: argparse.Namespace) -> int:
    cfg = demo_config(args.config, args.overrides, args.quick, args.out_dir)
    run_demo(cfg, with_peers=not args.no_peers, show_progress=not args.no_progress)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesise data, search, train, evaluate and benchmark, offline",
                       description=__doc__)
    p.add_argument("--config", "-c", default="demo", help="recipe (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one epoch each (for tests)")
    p.add_argument("--out-dir", default=None, help="where runs go (default: the recipe's out_dir, runs/)")
    p.add_argument("--no-peers", action="store_true", help="skip the torchvision peers in the speed table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


