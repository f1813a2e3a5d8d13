"""Paired image/label transforms on torchvision.transforms.v2.

The label travels as a `tv_tensors.Mask`, so every geometric op (resize, crop, pad, flip) is
dispatched to its mask kernel: nearest(-exact) interpolation only, padding with the ignore value 255.
Colour ops touch the image alone.

train: random scale (data.scale_range; none with probability data.unscaled_prob) → pad (image 0, label 255) + random crop (data.crop_size)
       → horizontal flip (data.flip) → colour jitter (data.color_jitter, data.hue_jitter; 0 disables)
       → float + ImageNet normalisation
eval:  optional fixed resize to data.eval_size (label nearest-exact) → float + normalisation
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IGNORE = 255


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of [3,H,W] or [N,3,H,W]; values clamped to [0, 1]."""
    shape = (3, 1, 1) if t.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(MEAN, dtype=t.dtype, device=t.device).view(shape)
    std = torch.tensor(STD, dtype=t.dtype, device=t.device).view(shape)
    return (t * std + mean).clamp(0.0, 1.0)


def resize_pair_member(inpt: Any, size: list[int]) -> Any:
    """Resize an image (bilinear, antialiased) or a label (`tv_tensors.Mask`: nearest-EXACT).

    The mask must sample at pixel centres like the bilinear image does: torchvision's default
    `NEAREST` maps output pixel i to input floor(i · in/out), half a pixel up-left of where the
    image's pixel i comes from, so a 1-px pole's label would land beside it in the image.
    """
    if isinstance(inpt, tv_tensors.Mask):
        return F.resize(inpt, size, interpolation=InterpolationMode.NEAREST_EXACT)
    return F.resize(inpt, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from [lo, hi] (image bilinear, mask nearest-exact);
    with probability `unscaled_p` the image keeps its size and is not resampled at all.

    Why the second: any resampling low-passes the image (antialiased downscaling averages
    pixels, bilinear upscaling interpolates them), so with scale augmentation alone the network
    trains on images smoother than the unresampled ones it is tested on."""

    def __init__(self, lo: float, hi: float, unscaled_p: float = 0.0):
        super().__init__()
        self.lo, self.hi, self.unscaled_p = float(lo), float(hi), float(unscaled_p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = next(F.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        s = float(torch.empty(()).uniform_(self.lo, self.hi))
        if self.unscaled_p > 0 and float(torch.rand(())) < self.unscaled_p:
            return {"size": None}
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return inpt if params["size"] is None else resize_pair_member(inpt, params["size"])


class FixedResize(v2.Transform):
    """Resize to one size (image bilinear, mask nearest-exact)."""

    def __init__(self, size: list[int]):
        super().__init__()
        self.size = list(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return resize_pair_member(inpt, self.size)


class SegTransform:
    """Callable (image uint8 [3,H,W], label uint8 [H,W]) → (float32 [3,h,w], int64 [h,w])."""

    def __init__(self, ops: list[Any]):
        self.pipeline = v2.Compose(
            ops + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))]
        )

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(label))
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f"SegTransform({self.pipeline!r})"


def train_transform(
    crop_size: list[int],
    scale_range: list[float] = (0.5, 2.0),
    flip: bool = True,
    color_jitter: float = 0.2,
    hue_jitter: float | None = None,
    unscaled_prob: float = 0.0,
) -> SegTransform:
    ops: list[Any] = []
    lo, hi = scale_range
    if (lo, hi) != (1.0, 1.0):
        ops.append(RandomScale(lo, hi, unscaled_prob))
    ops.append(
        v2.RandomCrop(
            list(crop_size), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}
        )
    )
    if flip:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    hue = min(0.5, float(color_jitter) / 4 if hue_jitter is None else float(hue_jitter))
    if color_jitter > 0 or hue > 0:
        s = float(color_jitter)
        ops.append(v2.ColorJitter(brightness=s or None, contrast=s or None, saturation=s or None, hue=hue or None))
    return SegTransform(ops)


def eval_transform(eval_size: list[int] | None = None) -> SegTransform:
    ops: list[Any] = []
    if eval_size is not None:
        ops.append(FixedResize(list(eval_size)))
    return SegTransform(ops)


def build_transform(cfg: Any, train: bool) -> SegTransform:
    """The transform a `DataConfig` asks for."""
    if train:
        return train_transform(cfg.crop_size, cfg.scale_range, cfg.flip, cfg.color_jitter,
                               cfg.hue_jitter, cfg.unscaled_prob)
    return eval_transform(cfg.eval_size)
