"""Evaluation: dataset-level mIoU of a segmentation network, with optional flip / multi-scale TTA.

`evaluate` accumulates ONE confusion matrix over the whole split (summed over processes when
distributed) and derives IoU per class, mIoU, pixel and mean accuracy from it
(engine/metrics.py). IoU_c = TP/(TP+FP+FN) with the ignore index excluded; a class absent from
both the ground truth and the predictions of the whole split has IoU NaN and does not enter the
mean, as in the official Cityscapes evaluation.

`gasnas eval` (engine/commands.py) runs it on a trained checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from gasnas.data import build_dataset
from gasnas.engine import checkpoint as ckpt_io
from gasnas.engine import distributed as D
from gasnas.engine.amp import autocast
from gasnas.engine.metrics import confusion_matrix, nan_to_none, summarize
from gasnas.engine.runtime import progress
from gasnas.engine.sampling import eval_loader
from gasnas.errors import GasnasError
from gasnas.fileio import torch_load
from gasnas.space.derived import derived_from_checkpoint


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


def logit_adjust_checkpoint(path: Path, cfg: Any, device: torch.device,
                            memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any] | None:
    """Post-hoc logit adjustment of a trained checkpoint, a step of its own after training
    (`train.logit_adjust`): τ is chosen on every `train.logit_adjust_every`-th training image at
    native scale (never on val), folded into the classifier's bias (logits are resized
    bilinearly, so a per-class constant passes through unchanged), and the val split evaluated
    again; the checkpoint is rewritten with the adjusted weights and a `logit_adjust` record in
    its meta, which this returns. None when the checkpoint records one already."""
    from torch.utils.data import Subset

    ck = torch_load(path)
    meta = ck.get("meta") or {}
    if "logit_adjust" in meta:
        return None
    if not meta.get("class_weights"):
        raise GasnasError(f"{path}: logit adjustment needs a net trained with class weights (train.class_weighting)")
    model, _ = derived_from_checkpoint(ck, path)
    model.to(device=device, memory_format=memory_format)
    data, workers = cfg.data, cfg.data.workers
    calib_ds = build_dataset(data, data.train_split, train=False)  # native scale
    calib = Subset(calib_ds, list(range(0, len(calib_ds), cfg.train.logit_adjust_every)))
    log_w = torch.log(torch.tensor(meta["class_weights"], dtype=torch.float32))
    sweep = logit_adjust_sweep(model, eval_loader(calib, workers=workers), log_w, LOGIT_ADJUST_TAUS,
                               data.num_classes, data.ignore_index)
    best = max(range(len(sweep)), key=lambda i: (sweep[i], -i))  # ties: the smaller τ
    tau = LOGIT_ADJUST_TAUS[best]
    with torch.no_grad():
        model.head.classifier.bias.sub_(tau * log_w.to(device))
    val_ds = build_dataset(data, data.val_split, train=False)
    result = evaluate(model, eval_loader(val_ds, workers=workers), data.num_classes, data.ignore_index,
                      class_names=meta.get("class_names"))
    record = {"tau": tau, "calibration_images": len(calib),
              "calibration_miou": {str(t): m for t, m in zip(LOGIT_ADJUST_TAUS, sweep)},
              "val_miou_before": meta.get("miou")}
    ck["model"] = model.state_dict()
    ck["meta"].update(miou=result["miou"], pixel_acc=result["pixel_acc"], iou=nan_to_none(result["iou"]),
                      logit_adjust=record)
    ckpt_io.save(path, ck)
    return dict(record, val_miou=result["miou"], val_pixel_acc=result["pixel_acc"])
