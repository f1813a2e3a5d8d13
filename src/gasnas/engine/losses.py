"""Segmentation losses shared by search and training: cross-entropy and OHEM cross-entropy.

Both ignore `ignore_index` pixels and are normalised by the number of counted pixels of the
WHOLE (global) batch: with W data-parallel processes each process returns
W · (its summed loss) / (global count), so the gradients averaged across processes equal the
gradient of the one-process loss exactly (see engine/distributed.py). For one process this is
the usual mean.
"""

from __future__ import annotations

import math

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


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy, mean over labelled pixels (global across processes)."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        count = (target != self.ignore_index).sum()
        return _global_mean(per_pixel.sum(), count, info)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining: keep the pixels whose true-class probability is below
    `thresh` (loss above -log thresh); if fewer than `min_kept` are that hard, keep the
    `min_kept` hardest ones. `thresh >= 1` keeps every labelled pixel (plain cross-entropy).

    With W processes each keeps at least ceil(min_kept / W) of its own pixels (the threshold
    itself is global, so this differs from one process only when min_kept decides).
    """

    def __init__(self, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 10000) -> None:
        super().__init__()
        self.ignore_index, self.thresh, self.min_kept = ignore_index, float(thresh), int(min_kept)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        losses = per_pixel[target != self.ignore_index]
        if self.thresh < 1.0 and losses.numel() > 0:
            world = info.world if info is not None else 1
            min_kept = min(losses.numel(), math.ceil(self.min_kept / world))
            hard = losses[losses > -math.log(max(self.thresh, 1e-12))]
            if hard.numel() < min_kept:
                hard = torch.topk(losses, min_kept, sorted=False).values
            losses = hard
        return _global_mean(losses.sum(), losses.numel(), info)


def build_criterion(ignore_index: int, ohem: bool, thresh: float = 0.7, min_kept: int = 10000) -> nn.Module:
    return OhemCrossEntropy(ignore_index, thresh, min_kept) if ohem else CrossEntropy(ignore_index)
