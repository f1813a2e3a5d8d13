"""Segmentation losses shared by search and training: cross-entropy and OHEM cross-entropy,
optionally class-weighted (`class_weights`: ENet's 1/ln(1.02 + p) or median-frequency balancing).

Both ignore `ignore_index` pixels and are normalised by the number of counted pixels of the
WHOLE (global) batch: with W data-parallel processes each process returns
W · (its summed loss) / (global count), so the gradients averaged across processes equal the
gradient of the one-process loss exactly (see engine/distributed.py). For one process this is
the usual mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gasnas.engine.distributed import DistInfo, all_reduce_sum


def _global_mean(loss_sum: torch.Tensor, count: int | torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    world = info.world if info is not None else 1
    total = torch.as_tensor(count, dtype=torch.float32, device=loss_sum.device).reshape(1).clone()
    if info is not None:
        all_reduce_sum(total, info)
    return loss_sum * world / total.clamp(min=1.0)[0]


def class_weights(pixel_counts: np.ndarray | list[int], mode: str) -> list[float] | None:
    """Per-class loss weights from the training split's pixel counts, scaled to mean 1 over the
    classes that occur (so the loss keeps its scale); classes that never occur get weight 1.

    `enet`: w_c = 1 / ln(1.02 + p_c) (Paszke et al., ENet 2016), bounded for rare classes;
    `median_freq`: w_c = median(p) / p_c (Eigen & Fergus 2015, SegNet's CamVid recipe);
    `none`: no weights (None).
    """
    if mode == "none":
        return None
    counts = np.asarray(pixel_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class weights: the training split has no labelled pixel")
    p = counts / counts.sum()
    w = np.ones_like(p)
    if mode == "enet":
        w[present] = 1.0 / np.log(1.02 + p[present])
    elif mode == "median_freq":
        w[present] = np.median(p[present]) / p[present]
    else:
        raise ValueError(f"unknown class weighting {mode!r} (none, enet, median_freq)")
    w[present] /= w[present].mean()
    return [float(v) for v in w]


def _cross_entropy_mean(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                        weight: torch.Tensor | None, info: DistInfo | None) -> torch.Tensor:
    """Σ over labelled pixels of the (class-weighted) cross-entropy / their (global) count; masks,
    no boolean indexing (indexing was ~5% of a demo training step)."""
    if weight is not None:
        weight = weight.to(logits.device, logits.dtype)
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="none")
    return _global_mean(per_pixel.sum(), (target != ignore_index).sum(), info)


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy, mean over labelled pixels (global across processes)."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
        return _cross_entropy_mean(logits, target, self.ignore_index, None, info)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining: keep the pixels whose true-class probability is below
    `thresh` (loss above -log thresh); if fewer than `min_kept` are that hard, keep the
    `min_kept` hardest ones. `thresh >= 1` keeps every labelled pixel (plain cross-entropy).
    With `weight` (one per class), the kept pixels' losses are weighted by their class; which
    pixels count as hard is decided on the unweighted loss (the probability threshold).

    With W processes each keeps at least ceil(min_kept / W) of its own pixels (the threshold
    itself is global, so this differs from one process only when min_kept decides).
    """

    def __init__(self, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 10000,
                 weight: list[float] | None = None) -> None:
        super().__init__()
        self.ignore_index, self.thresh, self.min_kept = ignore_index, float(thresh), int(min_kept)
        self.register_buffer("weight", None if weight is None else torch.tensor(weight, dtype=torch.float32),
                             persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
        if self.thresh >= 1.0:  # every labelled pixel is kept: plain (weighted) cross-entropy
            return _cross_entropy_mean(logits, target, self.ignore_index, self.weight, info)
        per_pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        losses = per_pixel[valid]
        factor = self.weight.to(losses.device, losses.dtype)[target[valid]] if self.weight is not None else None
        if losses.numel() > 0:
            world = info.world if info is not None else 1
            min_kept = min(losses.numel(), math.ceil(self.min_kept / world))
            keep = (losses > -math.log(max(self.thresh, 1e-12))).nonzero().squeeze(1)
            if keep.numel() < min_kept:
                keep = torch.topk(losses, min_kept, sorted=False).indices
            losses = losses[keep]
            factor = factor[keep] if factor is not None else None
        total = (losses * factor).sum() if factor is not None else losses.sum()
        return _global_mean(total, losses.numel(), info)


class SoftDice(nn.Module):
    """1 − mean soft Dice over the classes present in the (global) batch: per class
    2·Σ p_c·[y = c] / (Σ p_c + Σ [y = c]) over the labelled pixels, p = softmax(logits). Why:
    cross-entropy is dominated by large classes, while mIoU weighs every class equally; a
    set-level overlap term pulls rare, thin classes toward their IoU (as in nnU-Net's CE + Dice).

    The sums are over the whole batch of every process: each process adds the other processes'
    (detached) sums to its own and scales its gradient by W, so the value is the one-process
    value on every process and the averaged gradients equal the one-process gradient.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, eps: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.ignore_index, self.eps = num_classes, ignore_index, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
        c = self.num_classes
        prob = logits.float().softmax(1)
        valid = (target != self.ignore_index).unsqueeze(1).to(prob.dtype)  # [N,1,H,W]: masks, not indexing
        labels = torch.where(target != self.ignore_index, target, 0).unsqueeze(1)
        p_true = prob.gather(1, labels) * valid
        inter = torch.zeros(c, device=prob.device, dtype=prob.dtype).index_add(0, labels.flatten(), p_true.flatten())
        pred = (prob * valid).sum(dim=(0, 2, 3))
        truth = torch.bincount(labels.flatten(), weights=valid.flatten(), minlength=c)[:c].to(prob.dtype)
        stats = torch.stack([inter, pred, truth])
        world = 1
        if info is not None and info.enabled:
            world = info.world
            total = stats.detach().clone()
            all_reduce_sum(total, info)
            stats = stats + (total - stats.detach())
        inter, pred, truth = stats
        present = truth > 0
        if not bool(present.any()):
            return logits.sum() * 0.0
        dice = (2 * inter[present] + self.eps) / (pred[present] + truth[present] + self.eps)
        loss = 1.0 - dice.mean()
        if world == 1:
            return loss
        # every process holds the same global value; its gradient reaches only this process's
        # pixels, so scale the gradient (not the value) by W for the cross-process average
        return loss.detach() + world * (loss - loss.detach())


def build_criterion(ignore_index: int, ohem: bool, thresh: float = 0.7, min_kept: int = 10000,
                    weight: list[float] | None = None) -> nn.Module:
    """OHEM cross-entropy (`ohem`) or cross-entropy, class-weighted when `weight` is given."""
    if ohem or weight is not None:
        return OhemCrossEntropy(ignore_index, thresh if ohem else 1.0, min_kept, weight)
    return CrossEntropy(ignore_index)
