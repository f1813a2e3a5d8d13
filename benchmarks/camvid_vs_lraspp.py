"""CamVid: a searched GAS net beside LR-ASPP, both trained from scratch by the same recipe.

Stages (each skipped when its output exists, so a rerun continues where it stopped; every `gasnas`
command is printed before it runs; every stage, commands and in-process timings alike, runs under
`--lock`'s exclusive flock):
1. search: `gasnas search -c RECIPE --target-ratio R --set out_dir=OUT --set name=search
   --set latency.threads=N ...` → OUT/search/genotype.json: the search times LR-ASPP
   (`lraspp_mobilenet_v3_large`, random weights) beside every derived net, and its budget is R ×
   LR-ASPP's latency on that scale (`--target-ms T` gives T in ms instead). `--genotype PATH`
   skips it and trains that genotype instead (summary.json says which: "searched" or the path).
2. training: `gasnas train -g GENOTYPE -c RECIPE --run-dir OUT/train-gasnas ...` and
   `gasnas train --peer lraspp_mobilenet_v3_large -c RECIPE --run-dir OUT/train-lraspp ...`, the
   same `--set`s, `train.epochs` (`--train-epochs`, default the recipe's) and `train.eval_every`;
   an interrupted training continues with `gasnas train --resume`.
3. evaluation of each best.pt on the val split: `gasnas eval --checkpoint ... --json
   OUT/eval/NAME-single.json` (single scale) and `... --flip --scales S --json
   OUT/eval/NAME-tta.json` (test-time augmentation, `--tta-scales`); mIoU and per-class IoU.
4. latency: both nets (the genotype's DerivedNet and the peer, as built for training) timed in
   one process, round-robin over torch and ONNX Runtime, at bench.input_size (`--input`), batch
   1, `--threads`; params and GFLOPs at that size (OUT/latency.json).
5. overlays: `gasnas predict --checkpoint ... --overlay --out OUT/overlays/NAME IMAGE ...` of
   `--overlay-images` val images per net; OUT/overlays/side_by_side.png puts image, ground
   truth and both nets' overlays in one row per image.
Report: OUT/summary.json (genotype and checkpoint paths with their sha256, every number above,
training wall times, the goal's checks), OUT/summary.md, OUT/curves.png (val mIoU and train
loss per epoch of both nets).

    python benchmarks/camvid_vs_lraspp.py --config camvid --target-ratio 0.8 \
        --out runs/camvid-vs-lraspp --lock FILE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from gasnas_cli import run_gasnas, set_flags

from gasnas.config import parse_size
from gasnas.errors import GasnasError
from gasnas.fileio import exclusive_lock as exclusive

PEER = "lraspp_mobilenet_v3_large"
NETS = ("gasnas", "lraspp")
BACKENDS = ("torch", "onnxruntime")
# the goal: searched net >= 66 val mIoU single-scale, >= LR-ASPP + 3 under the same recipe,
# <= 0.8x LR-ASPP's latency (torch, measured in one run), trained in <= 90 min
GOAL = {"min_val_miou": 66.0, "min_gain_over_lraspp": 3.0, "max_latency_ratio_torch": 0.8,
        "max_train_minutes": 90.0}


# --------------------------------------------------------------------------- running stages


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rows(metrics: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []


def epoch_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a training's metrics.jsonl (post-hoc rows without an epoch left out)."""
    return [r for r in _rows(run_dir / "metrics.jsonl") if "epoch" in r]


def finished_epochs(run_dir: Path) -> int:
    """Epochs a training folder has finished (0 without last.pt)."""
    if not (run_dir / "last.pt").is_file():
        return 0
    return max((int(r["epoch"]) for r in epoch_rows(run_dir)), default=0)


def _save_json(path: Path, obj: Any) -> None:
    from gasnas.fileio import write_json_atomic

    write_json_atomic(path, obj)


def time_nets(models: dict[str, Any], size: list[int], backends: tuple[str, ...], threads: int | None,
              rounds: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Per net and backend: round medians and their median (latency.timing.time_models); the
    driver's one timing call, which tests replace."""
    from gasnas.latency.timing import time_models

    return time_models(models, size, backends, threads, rounds, repeats)


# --------------------------------------------------------------------------- the protocol


def stage_budget(args: argparse.Namespace) -> dict[str, Any]:
    """How the search is budgeted. `--target-ratio R` goes to the search itself, which times
    LR-ASPP beside each derived net (latency.target_ratio): the ms it used are read back from the
    genotype once the search ran (`budget_used`)."""
    if args.genotype:
        return {"how": "none: a given genotype", "target_ratio": None, "target_ms": None}
    if args.target_ms is not None:
        return {"how": "explicit --target-ms", "target_ratio": None, "target_ms": args.target_ms}
    return {"how": f"--target-ratio: the search times {PEER} beside its derived nets",
            "target_ratio": args.target_ratio, "target_ms": None}


def budget_used(budget: dict[str, Any], genotype: Path) -> dict[str, Any]:
    """The budget with the T (ms) the search recorded in its genotype's provenance."""
    if budget["target_ratio"] is None:
        return budget
    prov = json.loads(genotype.read_text()).get("provenance", {})
    return {**budget, "target_ms": prov.get("target_ms")}


def stage_search(args: argparse.Namespace, out: Path, budget: dict[str, Any], walls: dict[str, float]) -> Path:
    if args.genotype:
        from gasnas.space.genotype import resolve_genotype

        path = resolve_genotype(args.genotype)  # a file, or a shipped genotype's name
        if not path.is_file():
            raise SystemExit(f"--genotype {path}: no such file or shipped genotype")
        return path
    run_dir = out / "search"
    genotype = run_dir / "genotype.json"
    if not genotype.is_file():
        if (run_dir / "checkpoints" / "last.pt").is_file():  # interrupted: continue it
            cmd = ["search", "--resume", str(run_dir), "--no-progress"]
        else:
            sets = [*args.set, f"out_dir={out}", "name=search", f"latency.threads={args.threads}"]
            if args.search_epochs is not None:
                sets.append(f"search.epochs={args.search_epochs}")
            if args.warmup_epochs is not None:
                sets.append(f"search.warmup_epochs={args.warmup_epochs}")
            limit = (["--target-ms", f"{budget['target_ms']:g}"] if budget["target_ms"] is not None
                     else ["--target-ratio", f"{budget['target_ratio']:g}"])
            cmd = ["search", "-c", args.config, *limit, "--no-progress", *set_flags(sets)]
        walls["search"] = walls.get("search", 0.0) + run_gasnas(cmd, args.lock)
        _save_json(out / "walls.json", walls)
    return genotype


def check_genotype(out: Path, genotype: Path, source: str) -> dict[str, Any]:
    """The genotype this folder's results belong to; a different one on a rerun is an error."""
    record = {"source": source, "path": str(genotype), "sha256": sha256(genotype)}
    path = out / "genotype_used.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before["sha256"] != record["sha256"]:
            raise SystemExit(f"{out} holds results of genotype {before['path']} (sha256 {before['sha256'][:12]}); "
                             f"{genotype} differs: use another --out")
    else:
        _save_json(path, record)
    return record


def stage_trainings(args: argparse.Namespace, out: Path, genotype: Path, epochs: int, eval_every: int,
                    walls: dict[str, float]) -> None:
    recipe = [*args.set, f"train.epochs={epochs}", f"train.eval_every={eval_every}"]
    for name, what in (("gasnas", ["--genotype", str(genotype)]), ("lraspp", ["--peer", PEER])):
        run_dir = out / f"train-{name}"
        if finished_epochs(run_dir) >= epochs and (run_dir / "best.pt").is_file():
            continue
        if (run_dir / "last.pt").is_file():  # interrupted: continue it
            cmd = ["train", "--resume", str(run_dir), "--no-progress"]
        else:
            cmd = ["train", *what, "-c", args.config, "--run-dir", str(run_dir), "--no-progress", *set_flags(recipe)]
        key = f"train-{name}"
        walls[key] = walls.get(key, 0.0) + run_gasnas(cmd, args.lock)
        _save_json(out / "walls.json", walls)


def stage_eval(args: argparse.Namespace, out: Path, scales: list[float]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in NETS:
        ckpt = out / f"train-{name}" / "best.pt"
        for mode, extra in (("single", []), ("tta", ["--flip", "--scales", ",".join(f"{s:g}" for s in scales)])):
            path = out / "eval" / f"{name}-{mode}.json"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                run_gasnas(["eval", "--checkpoint", str(ckpt), *extra, "--json", str(path)], args.lock)
            results[f"{name}-{mode}"] = json.loads(path.read_text())
    return results


def stage_latency(args: argparse.Namespace, out: Path, cfg: Any, genotype: dict[str, Any]) -> dict[str, Any]:
    size = parse_size(args.input, "--input") if args.input else parse_size(cfg.bench.input_size, "bench.input_size")
    path = out / "latency.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("genotype_sha256") == genotype["sha256"] and done.get("input_size") == size:
            return done
    from gasnas.models import build_peer, complexity
    from gasnas.space.derived import DerivedNet
    from gasnas.space.genotype import Genotype

    models = {"gasnas": DerivedNet(Genotype.load(genotype["path"])).eval(),
              "lraspp": build_peer(PEER, cfg.data.num_classes).eval()}
    sizes = {name: complexity(m, (size[0], size[1])) for name, m in models.items()}
    print(f"# latency: both nets on {', '.join(BACKENDS)}, round-robin in one process at {size[0]}x{size[1]}, "
          f"{args.threads} threads, {args.rounds} rounds x {args.repeats} runs", flush=True)
    t0 = time.perf_counter()
    with exclusive(args.lock):
        timed = time_nets(models, size, BACKENDS, args.threads, args.rounds, args.repeats)
    result = {"input_size": size, "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
              "batch": 1, "genotype_sha256": genotype["sha256"], "wall_s": time.perf_counter() - t0,
              "nets": {name: {"params": sizes[name][0], "flops": sizes[name][1], "backends": timed[name]}
                       for name in models}}
    _save_json(path, result)
    return result


def val_pairs(cfg: Any, k: int) -> list[Any]:
    """`k` val (image, label) pairs spread evenly over the split's sorted listing."""
    from gasnas.data.layouts import get_layout

    pairs = get_layout(cfg.data.format, cfg.data.root).listing(cfg.data.val_split).pairs
    if not pairs or k <= 0:
        return []
    k = min(k, len(pairs))
    return [pairs[round(i * (len(pairs) - 1) / max(1, k - 1))] for i in range(k)]


def stage_overlays(args: argparse.Namespace, out: Path, cfg: Any) -> list[str]:
    pairs = val_pairs(cfg, args.overlay_images)
    if not pairs:
        return []
    root = out / "overlays"
    for name in NETS:
        folder = root / name
        if all((folder / f"{Path(p.image).stem}_overlay.png").is_file() for p in pairs):
            continue
        run_gasnas(["predict", "--checkpoint", str(out / f"train-{name}" / "best.pt"), "--overlay",
                    "--out", str(folder), *[str(p.image) for p in pairs]], args.lock)
    side = root / "side_by_side.png"
    plot_side_by_side(side, cfg, pairs, root)
    return [str(side)] + [str(root / n / f"{Path(p.image).stem}_overlay.png") for n in NETS for p in pairs]


# --------------------------------------------------------------------------- pictures


def plot_side_by_side(path: Path, cfg: Any, pairs: list[Any], root: Path) -> None:
    """One row per val image: the image, its ground truth, each net's overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from gasnas.data.classes import colorize
    from gasnas.data.layouts import get_layout
    from gasnas.fileio import atomic_write

    layout = get_layout(cfg.data.format, cfg.data.root)
    pal = layout.palette()
    cols = ["image", "ground truth", *(f"{n} overlay" for n in NETS)]
    fig, axes = plt.subplots(len(pairs), len(cols), figsize=(3.2 * len(cols), 2.5 * len(pairs)), squeeze=False)
    for row, p in zip(axes, pairs):
        lut = layout.label_table(Path(p.label))[0]
        raw = np.asarray(Image.open(p.label))
        panels = [np.asarray(Image.open(p.image).convert("RGB")), colorize(lut[raw], pal)]
        panels += [np.asarray(Image.open(root / n / f"{Path(p.image).stem}_overlay.png").convert("RGB")) for n in NETS]
        for ax, title, img in zip(row, cols, panels):
            ax.imshow(img)
            ax.set_title(f"{title}: {Path(p.image).stem}" if title == "image" else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda q: fig.savefig(q, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(path: Path, curves: dict[str, list[dict[str, Any]]]) -> None:
    """Val mIoU and train loss per epoch of both nets, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gasnas.fileio import atomic_write

    fig, (ax_miou, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in curves.items():
        ev = [(r["epoch"], 100 * r["val_miou"]) for r in rows if r.get("val_miou") is not None]
        tl = [(r["epoch"], r["loss"]) for r in rows if r.get("loss") is not None]
        if ev:
            ax_miou.plot(*zip(*ev), marker="o", ms=3, label=name)
        if tl:
            ax_loss.plot(*zip(*tl), label=name)
    ax_miou.set(xlabel="epoch", ylabel="val mIoU (%, single scale)", title="validation")
    ax_loss.set(xlabel="epoch", ylabel="train loss (epoch mean)", title="training")
    for ax in (ax_miou, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda q: fig.savefig(q, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


# --------------------------------------------------------------------------- report


def _per_class(result: dict[str, Any]) -> dict[str, float | None]:
    return {n: (None if v is None else 100.0 * v) for n, v in zip(result["class_names"], result["iou"])}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def round_ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """gasnas / LR-ASPP from two timing records of one run (latency.timing.paired_ratio)."""
    from gasnas.latency.timing import paired_ratio

    if a.get("status") != "ok" or b.get("status") != "ok":
        return None
    return paired_ratio(a["round_medians_ms"], b["round_medians_ms"])


def build_summary(args: argparse.Namespace, out: Path, epochs: int, eval_every: int, scales: list[float],
                  budget: dict[str, Any], genotype: dict[str, Any], evals: dict[str, dict[str, Any]],
                  latency: dict[str, Any], overlays: list[str], walls: dict[str, float]) -> dict[str, Any]:
    geno = json.loads(Path(genotype["path"]).read_text())
    models: dict[str, Any] = {}
    for name in NETS:
        run_dir = out / f"train-{name}"
        rows = epoch_rows(run_dir)
        evaluated = [r for r in rows if r.get("val_miou") is not None]
        best = max(evaluated, key=lambda r: (r["val_miou"], -r["epoch"])) if evaluated else None
        single, tta = evals[f"{name}-single"], evals[f"{name}-tta"]
        lat = latency["nets"][name]
        ckpt = run_dir / "best.pt"
        wall = walls.get(f"train-{name}")
        models[name] = {
            "checkpoint": {"path": str(ckpt), "sha256": sha256(ckpt)},
            "run_dir": str(run_dir), "epochs": max((int(r["epoch"]) for r in rows), default=0),
            "best_epoch": best["epoch"] if best else None,
            "val_miou_single": 100.0 * single["miou"], "val_miou_tta": 100.0 * tta["miou"],
            "val_pixel_acc_single": 100.0 * single["pixel_acc"] if single.get("pixel_acc") is not None else None,
            "per_class_iou_single": _per_class(single), "per_class_iou_tta": _per_class(tta),
            "latency_ms": {b: (r.get("median_ms") if r.get("status") == "ok" else None)
                           for b, r in lat["backends"].items()},
            "latency_errors": {b: r["error"] for b, r in lat["backends"].items() if r.get("status") != "ok"},
            "params_m": lat["params"] / 1e6, "gflops": lat["flops"] / 1e9,
            "train_wall_s": wall, "train_wall_min": wall / 60 if wall is not None else None,
        }
    g, p = models["gasnas"], models["lraspp"]
    paired = {b: round_ratios(latency["nets"]["gasnas"]["backends"].get(b, {}),
                              latency["nets"]["lraspp"]["backends"].get(b, {})) for b in BACKENDS}
    comparison = {
        "miou_delta_single": g["val_miou_single"] - p["val_miou_single"],
        "miou_delta_tta": g["val_miou_tta"] - p["val_miou_tta"],
        "latency_ratio": {b: (r["median"] if r else None) for b, r in paired.items()},
        "latency_ratio_rounds": paired,
        "params_ratio": _ratio(g["params_m"], p["params_m"]), "gflops_ratio": _ratio(g["gflops"], p["gflops"]),
        "train_wall_ratio": _ratio(g["train_wall_s"], p["train_wall_s"]),
    }
    ratio_torch = comparison["latency_ratio"]["torch"]
    checks = {
        f"val_miou_at_least_{GOAL['min_val_miou']:g}": g["val_miou_single"] >= GOAL["min_val_miou"],
        f"at_least_lraspp_plus_{GOAL['min_gain_over_lraspp']:g}":
            comparison["miou_delta_single"] >= GOAL["min_gain_over_lraspp"],
        f"latency_ratio_torch_at_most_{GOAL['max_latency_ratio_torch']:g}":
            ratio_torch is not None and ratio_torch <= GOAL["max_latency_ratio_torch"],
        f"train_at_most_{GOAL['max_train_minutes']:g}_min":
            g["train_wall_min"] is not None and g["train_wall_min"] <= GOAL["max_train_minutes"],
    }
    return {
        "config": args.config, "sets": args.set, "train_epochs": epochs, "eval_every": eval_every,
        "units": {"miou": "percent", "latency": "ms, batch 1, median of round medians",
                  "latency_ratio": "median over rounds of gasnas / LR-ASPP timed in the same round", "params": "millions",
                  "flops": "GFLOPs of one forward at latency.input_size below", "wall": "seconds"},
        "genotype": {**genotype, "predicted_latency_ms": geno.get("predicted_latency_ms"),
                     "provenance": geno.get("provenance")},
        "budget": budget,
        "search": ({"run_dir": str(out / "search"), "wall_s": walls.get("search")}
                   if genotype["source"] == "searched" else None),
        "tta": {"flip": True, "scales": scales},
        "latency": {k: v for k, v in latency.items() if k != "nets"},
        "models": models, "comparison": comparison,
        "goal": {"rule": GOAL, "checks": checks, "passed": all(checks.values())},
        "files": {"curves": str(out / "curves.png"), "overlays": overlays},
        "walls_s": walls,
    }


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else f"{v:{fmt}}"


def _quartiles(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['median']:.2f} [{r['q1']:.2f}–{r['q3']:.2f}]"


def write_markdown(path: Path, s: dict[str, Any]) -> None:
    from gasnas.fileio import write_text_atomic

    lat, m = s["latency"], s["models"]
    size = f"{lat['input_size'][0]}x{lat['input_size'][1]}"
    g = s["genotype"]
    lines = [f"# CamVid: searched net vs LR-ASPP, recipe `{s['config']}`, {s['train_epochs']} epochs each", "",
             ("Genotype: searched" if g["source"] == "searched" else "Genotype: given")
             + f" ({g['path']}, sha256 {g['sha256'][:12]}…)."
             + (f" Search budget {s['budget']['target_ms']:.2f} ms ({s['budget']['how']})."
                if s["budget"]["target_ms"] is not None else ""), "",
             f"| model | val mIoU | val mIoU TTA | torch ms @{size} | ORT ms @{size} | params (M) | GFLOPs "
             "| best epoch | train wall (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in m.items():
        lines.append(f"| {name} | {r['val_miou_single']:.1f} | {r['val_miou_tta']:.1f} | "
                     f"{_f(r['latency_ms'].get('torch'))} | {_f(r['latency_ms'].get('onnxruntime'))} | "
                     f"{r['params_m']:.2f} | {r['gflops']:.2f} | {_f(r['best_epoch'], 'd')} | "
                     f"{_f(r['train_wall_min'])} |")
    c = s["comparison"]
    lines += ["", f"searched − LR-ASPP: {c['miou_delta_single']:+.1f} mIoU single scale, {c['miou_delta_tta']:+.1f} "
              f"with TTA (flip, scales {', '.join(f'{x:g}' for x in s['tta']['scales'])}); latency ratio "
              + ", ".join(f"{label} {_quartiles(c['latency_ratio_rounds'].get(b))}"
                          for b, label in (("torch", "torch"), ("onnxruntime", "ONNX Runtime")))
              + f" (median [quartiles] over {lat['rounds']} rounds of the per-round ratio; batch 1, "
              f"{lat['threads']} threads, both nets and backends round-robin in one process).", ""]
    names = list(m["gasnas"]["per_class_iou_single"])
    lines += ["| class | " + " | ".join(f"{n} | {n} TTA" for n in m) + " |",
              "|---|" + "---:|" * (2 * len(m))]
    for cls in names:
        lines.append(f"| {cls} | " + " | ".join(f"{_f(r['per_class_iou_single'].get(cls))} | "
                                               f"{_f(r['per_class_iou_tta'].get(cls))}" for r in m.values()) + " |")
    goal = s["goal"]
    lines += ["", f"Goal: **{'met' if goal['passed'] else 'not met'}** — "
              + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in goal["checks"].items())]
    if s["search"] and s["search"]["wall_s"] is not None:
        lines += ["", f"Search wall time: {s['search']['wall_s'] / 60:.1f} min."]
    lines += ["", "Curves: curves.png; overlays: overlays/side_by_side.png."]
    write_text_atomic(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="camvid", help="the recipe both nets are trained by")
    ap.add_argument("--out", default="runs/camvid-vs-lraspp")
    ap.add_argument("--target-ratio", type=float, default=0.8,
                    help="search budget as a fraction of LR-ASPP's latency, timed by the search beside its derived nets (default 0.8)")
    ap.add_argument("--target-ms", type=float, default=None, help="search budget in ms (overrides --target-ratio)")
    ap.add_argument("--genotype", default=None, metavar="PATH", help="train this genotype JSON (or a shipped genotype's name, configs/genotypes); no search")
    ap.add_argument("--search-epochs", type=int, default=None, help="default: the recipe's search.epochs")
    ap.add_argument("--warmup-epochs", type=int, default=None, help="default: the recipe's search.warmup_epochs")
    ap.add_argument("--train-epochs", type=int, default=None, help="both nets (default: the recipe's train.epochs)")
    ap.add_argument("--eval-every", type=int, default=None, help="val evaluation every N epochs (default: E // 20)")
    ap.add_argument("--tta-scales", default="0.75,1,1.25,1.5", help="test-time scales, with flip")
    ap.add_argument("--input", default=None, metavar="HxW", help="latency input size (default: bench.input_size)")
    ap.add_argument("--threads", type=int, default=2, help="timing threads (and the search's latency.threads)")
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds (the latency ratio is the median "
                    "over rounds of the ratio within a round)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per net and backend per round")
    ap.add_argument("--overlay-images", type=int, default=3, help="val images shown with both nets' predictions")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, every stage")
    ap.add_argument("--lock", default=None, metavar="FILE", help="flock file taken exclusively around each stage")
    args = ap.parse_args(argv)
    if args.target_ratio <= 0 or (args.target_ms is not None and args.target_ms <= 0):
        ap.error("--target-ratio and --target-ms must be positive")
    if args.threads < 1 or args.rounds < 1 or args.repeats < 1:
        ap.error("--threads, --rounds and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from gasnas.config import load_config, parse_scales

    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_config(args.config, args.set)
        scales = parse_scales(args.tta_scales)
    except GasnasError as exc:
        raise SystemExit(str(exc)) from None
    epochs = args.train_epochs or cfg.train.epochs
    eval_every = args.eval_every or max(1, epochs // 20)
    walls: dict[str, float] = json.loads((out / "walls.json").read_text()) if (out / "walls.json").is_file() else {}

    budget = stage_budget(args)
    genotype_path = stage_search(args, out, budget, walls)
    genotype = check_genotype(out, genotype_path, args.genotype or "searched")
    budget = budget_used(budget, genotype_path)
    stage_trainings(args, out, genotype_path, epochs, eval_every, walls)
    evals = stage_eval(args, out, scales)
    latency = stage_latency(args, out, cfg, genotype)
    overlays = stage_overlays(args, out, cfg)
    plot_curves(out / "curves.png", {name: epoch_rows(out / f"train-{name}") for name in NETS})
    summary = build_summary(args, out, epochs, eval_every, scales, budget, genotype, evals, latency, overlays, walls)
    _save_json(out / "summary.json", summary)
    write_markdown(out / "summary.md", summary)
    print((out / "summary.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
