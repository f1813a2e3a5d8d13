"""Segmentation metrics from ONE confusion matrix accumulated over a whole split.

`confusion_matrix` counts (ground truth, prediction) pairs with `torch.bincount`; rows are the
ground-truth class, columns the predicted class. Pixels labelled `ignore_index` (or any label
outside 0..K-1) are not counted. From the matrix:

- IoU_c = TP_c / (TP_c + FP_c + FN_c). A class absent from both the ground truth and the
  predictions of the whole split (TP + FP + FN = 0) has IoU NaN and is left out of the mean,
  as in the official Cityscapes evaluation (cityscapesscripts' evalPixelLevelSemanticLabeling
  averages only the classes with a defined IoU).
- mIoU = mean of the defined IoU_c (dataset-level: not an average of per-image mIoUs).
- pixel accuracy = Σ TP / Σ counted pixels; mean accuracy = mean over classes present in the
  ground truth of TP_c / (TP_c + FN_c).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """[K, K] int64 counts, rows = ground truth, columns = prediction, for any matching shapes."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    keep &= (pred >= 0) & (pred < num_classes)
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN) as float64; NaN where TP + FP + FN = 0."""
    cm = cm.double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean of the defined per-class IoUs (NaN classes excluded); NaN if none is defined."""
    iou = iou_per_class(cm)
    valid = ~torch.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = int(cm.sum())
    return float(cm.diag().sum()) / total if total else math.nan


def mean_accuracy(cm: torch.Tensor) -> float:
    cm = cm.double()
    gt = cm.sum(1)
    valid = gt > 0
    return float((cm.diag()[valid] / gt[valid]).mean()) if valid.any() else math.nan


def summarize(cm: torch.Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """The numbers one evaluation reports (NaN IoUs stay NaN; see `nan_to_none` for JSON)."""
    k = cm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    return {
        "miou": mean_iou(cm),
        "pixel_acc": pixel_accuracy(cm),
        "mean_acc": mean_accuracy(cm),
        "iou": [float(v) for v in iou_per_class(cm)],
        "class_names": names,
        "pixels": int(cm.sum()),
        "confusion": cm.clone(),
    }


def nan_to_none(value: Any) -> Any:
    """NaN → None recursively, so a result can be written as strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    return value


def format_table(result: dict[str, Any]) -> str:
    """Per-class IoU table plus the summary lines, as printed by `gasnas eval`."""
    names = result["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in zip(names, result["iou"]):
        shown = "  n/a (absent)" if math.isnan(iou) else f"{100 * iou:6.2f}"
        lines.append(f"{name:<{width}}  {shown}")
    lines.append("-" * (width + 8))
    lines.append(f"{'mIoU':<{width}}  {100 * result['miou']:6.2f}")
    lines.append(f"{'pixel acc':<{width}}  {100 * result['pixel_acc']:6.2f}")
    lines.append(f"{'mean acc':<{width}}  {100 * result['mean_acc']:6.2f}")
    return "\n".join(lines)
