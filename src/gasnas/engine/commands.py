"""CLI: `gasnas search`, `gasnas train`, `gasnas eval` (heavy imports inside the handlers).

All three run under torchrun for data parallelism (see engine/distributed.py), e.g.
`torchrun --nproc-per-node 4 -m gasnas search --config cityscapes --set device=cuda`.
Ctrl-C (or SIGTERM) saves a checkpoint at the next step and exits 130 (143) with a line saying
where; `--resume RUN_DIR` continues from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gasnas.config import add_config_args, parse_scales

if TYPE_CHECKING:  # torch is imported inside the handlers: `gasnas --help` stays fast
    import torch


def _config(args: argparse.Namespace, resume_config: Path | None):
    """--config (+ --set); when resuming without --config, the run's own config.yaml."""
    from gasnas.config import load_config
    from gasnas.errors import GasnasError

    if args.config:
        return load_config(args.config, args.overrides)
    if resume_config is not None:
        if not resume_config.is_file():
            raise GasnasError(f"{resume_config}: not found (pass --config RECIPE)")
        return load_config(resume_config, args.overrides)
    raise GasnasError(f"gasnas {args.command}: --config RECIPE is required (e.g. --config demo)")


def _run_guarded(fn) -> int:
    from gasnas.engine import distributed as D
    from gasnas.engine.runtime import RunInterrupted

    try:
        fn()
        return 0
    except RunInterrupted as stop:
        if D.current().main:
            print(f"gasnas: {stop}; continue with --resume", file=sys.stderr)
        return stop.exit_code
    finally:
        D.shutdown()


def _search(args: argparse.Namespace) -> int:
    from gasnas.engine.search import run_search, with_target

    cfg = with_target(_config(args, Path(args.resume) / "config.yaml" if args.resume else None), args.target_ms,
                      args.target_ratio)
    return _run_guarded(lambda: run_search(cfg, args.resume, ckpt_every_steps=args.ckpt_every_steps,
                                           show_progress=not args.no_progress))


def _train(args: argparse.Namespace) -> int:
    from gasnas.engine.train import run_train

    cfg = _config(args, Path(args.resume) / "config.yaml" if args.resume else None)
    return _run_guarded(lambda: run_train(cfg, args.genotype, args.resume, run_dir=args.run_dir,
                                          ckpt_every_steps=args.ckpt_every_steps,
                                          show_progress=not args.no_progress, peer=args.peer))


def config_for_checkpoint(meta: dict[str, Any], recipe: str | None, overrides: list[str]) -> Any:
    """--config if given, else the config stored in the checkpoint's meta (+ --set)."""
    from gasnas.config import apply_overrides, config_from_dict, load_config, validate
    from gasnas.errors import GasnasError

    if recipe:
        return load_config(recipe, overrides)
    stored = meta.get("config")
    if not isinstance(stored, dict):
        raise GasnasError("the checkpoint does not record its config: pass --config RECIPE")
    cfg = config_from_dict(apply_overrides(stored, overrides))
    validate(cfg)
    return cfg


def _eval(args: argparse.Namespace) -> int:
    """`gasnas eval --checkpoint C`: rebuild the network from a trained checkpoint, evaluate one split,
    print the per-class IoU table; `--save-preds DIR` writes colourised predictions."""
    import numpy as np

    from gasnas.data import build_dataset, colorize
    from gasnas.data import palette as data_palette
    from gasnas.engine.amp import check_amp
    from gasnas.engine.evaluate import evaluate
    from gasnas.engine.metrics import format_table, nan_to_none
    from gasnas.engine.runtime import configure_determinism, configure_tf32, resolve_device
    from gasnas.engine.sampling import eval_loader
    from gasnas.errors import GasnasError
    from gasnas.fileio import write_json_atomic
    from gasnas.models import load_trained

    model, meta = load_trained(args.checkpoint)
    cfg = config_for_checkpoint(meta, args.config, args.overrides)
    if hasattr(model, "set_input_padding"):  # weightless: the config (or --set) decides
        model.set_input_padding(cfg.space.pad_to_stride)
    configure_determinism(cfg.deterministic)
    configure_tf32(cfg.tf32)
    device = resolve_device(cfg.device)
    check_amp(cfg.train.amp, device, "train.amp")
    split = args.split or cfg.data.val_split
    dataset = build_dataset(cfg.data, split, train=False)
    names = list(meta.get("class_names") or getattr(dataset, "class_names", []) or [])
    if getattr(dataset, "num_classes", model.num_classes) != model.num_classes:
        raise GasnasError(f"{args.checkpoint}: the network predicts {model.num_classes} classes, the "
                          f"{cfg.data.format} dataset at {cfg.data.root} has {dataset.num_classes}")
    pal = np.asarray(meta["palette"], dtype=np.uint8) if meta.get("palette") else data_palette(cfg.data)
    scales = parse_scales(args.scales)
    model.to(device)

    saver = None
    if args.save_preds:
        out_dir = Path(args.save_preds)
        out_dir.mkdir(parents=True, exist_ok=True)
        examples: list[tuple[Any, Any, Any]] = []
        pairs = getattr(dataset, "pairs", None)

        def saver(i: int, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor) -> None:
            from PIL import Image

            from gasnas.data import denormalize

            stem = Path(pairs[i].image).stem if pairs is not None else f"{i:05d}"
            Image.fromarray(colorize(pred.numpy(), pal)).save(out_dir / f"{stem}.png")
            if len(examples) < 4:
                img = (denormalize(image).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                examples.append((img, label.numpy(), pred.numpy()))

    loader = eval_loader(dataset, workers=cfg.data.workers, batch_size=args.batch_size)
    result = evaluate(model, loader, model.num_classes, cfg.data.ignore_index, flip=args.flip,
                      scales=scales, class_names=names or None, on_prediction=saver,
                      show_progress=True, amp=cfg.train.amp)
    print(f"{args.checkpoint} on {cfg.data.format}:{cfg.data.root} split '{split}' "
          f"({len(dataset)} images, flip={args.flip}, scales={scales})")
    print(format_table(result))
    if args.save_preds:
        from gasnas.engine.runtime import safe_plot
        from gasnas.viz import plot_predictions

        if examples:
            safe_plot(plot_predictions, [e[0] for e in examples], [e[1] for e in examples],
                      [e[2] for e in examples], pal, Path(args.save_preds) / "examples.png")
        print(f"predictions written to {args.save_preds}")
    if args.json:
        record = {k: v for k, v in result.items() if k != "confusion"}
        record.update(confusion=result["confusion"].tolist(), checkpoint=str(args.checkpoint),
                      split=split, flip=args.flip, scales=scales)
        write_json_atomic(args.json, nan_to_none(record))
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run from RUN_DIR's last checkpoint (its config.yaml "
                        "is used unless --config is given)")
    p.add_argument("--ckpt-every-steps", type=int, default=0, metavar="N",
                   help="also checkpoint every N steps (default: at each epoch end only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an architecture (supernet + GGM + latency) → genotype.json",
                       description="Bilevel first-order search; writes the run folder cfg.run_dir "
                                   "(genotype.json, metrics.jsonl, plots, checkpoints).")
    add_config_args(p)
    p.add_argument("--target-ms", type=float, default=None, metavar="T",
                   help="latency budget: hinge loss toward T ms, λ adapted between epochs from the "
                        "measured latency of the derived net")
    p.add_argument("--target-ratio", type=float, default=None, metavar="R",
                   help="latency budget relative to a peer: T = R x the latency of latency.reference_peer "
                        "(default LR-ASPP) timed beside the derived nets on this machine")
    _run_options(p)
    p.set_defaults(func=_search)

    p = sub.add_parser("train", help="train a derived network from scratch → best.pt / last.pt",
                       description="Train the network of a genotype; writes cfg.run_dir/train.")
    p.add_argument("--genotype", "-g", default=None,
                   help="genotype.json written by gasnas search, or a shipped genotype's name (configs/genotypes)")
    p.add_argument("--peer", default=None, metavar="NAME",
                   help="train a torchvision peer instead (lraspp_mobilenet_v3_large, ...; no pretrained "
                        "weights) with the same recipe: the baseline for benchmarks")
    add_config_args(p)
    p.add_argument("--run-dir", default=None, help="output folder (default: cfg.run_dir/train)")
    _run_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="mIoU (per-class IoU table) of a trained checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by gasnas train")
    add_config_args(p)
    p.add_argument("--split", default=None, help="dataset split (default: data.val_split)")
    p.add_argument("--flip", action="store_true", help="test-time horizontal flip")
    p.add_argument("--scales", default="1", help="test-time scales, e.g. 0.75,1,1.25 (default 1)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--save-preds", default=None, metavar="DIR", help="write colourised predictions here")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the metrics as JSON")
    p.set_defaults(func=_eval)
