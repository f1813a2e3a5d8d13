"""Evaluation: dataset-level mIoU of a segmentation network, with optional flip / multi-scale TTA.

`evaluate` accumulates ONE confusion matrix over the whole split (summed over processes when
distributed) and derives IoU per class, mIoU, pixel and mean accuracy from it
(engine/metrics.py). IoU_c = TP/(TP+FP+FN) with the ignore index excluded; a class absent from
both the ground truth and the predictions of the whole split has IoU NaN and does not enter the
mean, as in the official Cityscapes evaluation.

`gasnas eval --checkpoint C` rebuilds the network from a trained checkpoint, evaluates one split
and prints the per-class IoU table; `--save-preds DIR` writes colourised predictions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from gasnas.engine import distributed as D
from gasnas.engine.metrics import confusion_matrix, summarize


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, flip: bool = False,
            scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Class scores [N, K, H, W] at the input size. Plain logits without TTA; with TTA the mean
    of the softmax probabilities over every scale (input resized bilinearly, output resized
    back) and, with `flip`, its horizontally mirrored copy."""
    size = images.shape[-2:]
    if not flip and list(scales) == [1.0]:
        return model(images)
    total, n = None, 0
    for s in scales:
        x = images if s == 1.0 else F.interpolate(
            images, size=(max(1, round(size[0] * s)), max(1, round(size[1] * s))),
            mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            out = model(x.flip(-1) if mirrored else x)
            if mirrored:
                out = out.flip(-1)
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            p = torch.softmax(out.float(), dim=1)
            total = p if total is None else total + p
            n += 1
    return total / n


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader | Any, num_classes: int, ignore_index: int = 255,
             flip: bool = False, scales: Sequence[float] = (1.0,), *,
             info: D.DistInfo | None = None, class_names: list[str] | None = None,
             on_prediction: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
             show_progress: bool = False, amp: str = "none") -> dict[str, Any]:
    """Dataset-level metrics of `model` over `loader` (batches of (image [N,3,H,W], label [N,H,W])).

    Returns {"miou", "pixel_acc", "mean_acc", "iou" (per class, NaN = absent), "class_names",
    "pixels", "confusion" ([K,K] int64, rows ground truth)}. The mIoU is computed from one
    confusion matrix over the whole split (never averaged per image): IoU_c = TP/(TP+FP+FN),
    pixels labelled `ignore_index` excluded, classes with TP+FP+FN = 0 are NaN and left out of
    the mean (official Cityscapes convention). With `info` (several processes) each process
    passes its own shard and the matrices are summed. `on_prediction(i, image, label, pred)` is
    called for every sample in loader order (i counts from 0). The model's train/eval mode is
    restored afterwards. `amp` (`none`, `bf16`, `fp16`; train.amp / search.amp): the forward
    passes under autocast; the class scores are compared in whatever dtype they come out.
    """
    from gasnas.engine.amp import autocast
    from gasnas.engine.runtime import progress

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    seen = 0
    try:
        for images, labels in progress(loader, show_progress, desc="eval"):
            images, labels = images.to(device), labels.to(device)
            with autocast(amp, device.type):
                pred = predict(model, images, flip, scales).argmax(1)
            cm += confusion_matrix(pred, labels, num_classes, ignore_index)
            if on_prediction is not None:
                for j in range(images.shape[0]):
                    on_prediction(seen + j, images[j].cpu(), labels[j].cpu(), pred[j].cpu())
            seen += images.shape[0]
    finally:
        model.train(was_training)
    if info is not None:
        D.all_reduce_sum(cm, info)
    return summarize(cm.cpu(), class_names)


LOGIT_ADJUST_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def logit_adjust_sweep(model: nn.Module, loader: DataLoader | Any, log_weights: torch.Tensor,
                       taus: Sequence[float], num_classes: int, ignore_index: int = 255) -> list[float]:
    """Dataset-level mIoU of argmax(logits − τ·log w) for each τ, one forward pass per batch.

    Post-hoc logit adjustment (Menon et al., ICLR 2021): a class-weighted loss moves every
    decision boundary toward the frequent classes' side, so the rare classes are over-predicted
    (on the demo, thin classes on 1.3-1.4x their pixels); subtracting τ·log w_c from the logits
    moves the boundaries back part of the way. The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    shift = log_weights.to(device).view(1, -1, 1, 1)
    cms = torch.zeros(len(taus), num_classes, num_classes, dtype=torch.int64, device=device)
    try:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            for i, tau in enumerate(taus):
                cms[i] += confusion_matrix((logits - tau * shift).argmax(1), labels, num_classes, ignore_index)
    finally:
        model.train(was_training)
    return [summarize(cm.cpu())["miou"] for cm in cms]


# --------------------------------------------------------------------------- CLI


def parse_scales(text: str) -> list[float]:
    from gasnas.errors import GasnasError

    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GasnasError(f"--scales {text!r}: expected numbers separated by commas, e.g. 0.75,1,1.25") from None
    if not scales or min(scales) <= 0:
        raise GasnasError(f"--scales {text!r}: expected positive numbers, e.g. 0.75,1,1.25")
    return scales


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


def run_eval_command(args: argparse.Namespace) -> int:
    import numpy as np

    from gasnas.data import build_dataset, colorize
    from gasnas.data import palette as data_palette
    from gasnas.engine.amp import check_amp
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
