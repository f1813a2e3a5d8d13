"""`gasnas predict`: colourised masks (and overlays) for image files and folders.

Each image runs at its own size: it is padded (edge-replicate) to a multiple of 32, the output
stride of the network, and the logits are cropped back, so there is no resize blur and the mask
aligns pixel for pixel. Masks are palette PNGs: the pixel values are the class ids and the
palette holds the colours, so one file is both the label map and its picture. Mean/std and the
palette come from the checkpoint's meta, else from the data package (ImageNet statistics, the
CamVid/Cityscapes palettes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gasnas.data import colorize
from gasnas.data.classes import CAMVID_PALETTE, cityscapes_palette
from gasnas.deploy.export import read_rgb, to_tensor
from gasnas.errors import GasnasError
from gasnas.fileio import atomic_write as write_atomic
from gasnas.models import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
STRIDE = 32


def voc_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC bit-interleaved palette: distinct colours for any number of classes."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def resolve_palette(meta: dict[str, Any], num_classes: int) -> np.ndarray:
    """[num_classes, 3] uint8: the checkpoint's palette, else the data package's (CamVid order
    for 11 classes, Cityscapes for 19), else VOC colours; padded with VOC colours if short."""

    given = meta.get("palette")
    if given:
        base = [tuple(int(v) for v in c[:3]) for c in given]
    elif num_classes == len(CAMVID_PALETTE):
        base = [tuple(int(v) for v in c) for c in CAMVID_PALETTE]
    elif num_classes == 19:
        base = [tuple(int(v) for v in c) for c in cityscapes_palette()]
    else:
        base = voc_palette(num_classes)
    if len(base) < num_classes:
        base += voc_palette(num_classes)[len(base):]
    return np.asarray(base[:num_classes], dtype=np.uint8)


def blend(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).round().astype(np.uint8)


def collect_images(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(image file, output stem relative to the out dir) for every input. Files are taken as
    given (any extension: unreadable ones fail later, by name); folders contribute their
    png/jpg files, recursively, keeping sub-folders. A missing path is a GasnasError."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise GasnasError(f"{p}: folder has no .png/.jpg images")
            found += [(f, f.relative_to(p).with_suffix("")) for f in files]
        elif p.is_file():
            found.append((p, Path(p.stem)))
        else:
            raise GasnasError(f"{p}: no such image file or folder")
    used: set[Path] = set()
    out = []
    for f, stem in found:  # a.png and a.jpg (or two folders' a.png) must not overwrite each other
        cand, k = stem, 1
        while cand in used:
            cand = stem.with_name(f"{stem.name}_{f.suffix.lstrip('.').lower()}" + (f"_{k}" if k > 1 else ""))
            k += 1
        used.add(cand)
        out.append((f, cand))
    return out


def pad_to_stride(x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


@torch.inference_mode()
def segment(model: nn.Module, image: np.ndarray, mean: Any, std: Any, device: str = "cpu") -> np.ndarray:
    """uint8 HxWx3 → HxW class ids (int64), at the image's own resolution."""

    x = to_tensor([image], mean, std).to(device)
    h, w = image.shape[:2]
    logits = model(pad_to_stride(x))[..., :h, :w]
    return logits.argmax(1)[0].cpu().numpy()


def _save_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    from PIL import Image

    if palette is not None and len(palette) <= 256:
        h, w = array.shape
        im = Image.frombytes("P", (w, h), np.ascontiguousarray(array, dtype=np.uint8).tobytes())
        im.putpalette(palette.reshape(-1).tolist())
    elif palette is not None:
        im = Image.fromarray(colorize(array, palette))
    else:
        im = Image.fromarray(array)
    write_atomic(path, lambda p: im.save(p, format="PNG"))


@dataclass
class PredictSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def predict_images(model: nn.Module, meta: dict[str, Any], inputs: list[str | Path],
                   out_dir: str | Path, overlay: bool = False, device: str = "cpu",
                   alpha: float = 0.5, progress: bool = True) -> PredictSummary:
    """Write `<stem>_mask.png` (and `<stem>_overlay.png`) per image under `out_dir`. Unreadable
    images are skipped with one line on stderr naming the file; the rest are written."""
    from tqdm import tqdm

    items = collect_images(inputs)
    out_dir = Path(out_dir)
    model = model.eval().to(device)
    num_classes = int(getattr(model, "num_classes", 0) or len(meta.get("class_names") or []) or 256)
    palette = resolve_palette(meta, num_classes)
    mean, std = meta.get("mean") or IMAGENET_MEAN, meta.get("std") or IMAGENET_STD
    summary = PredictSummary()
    bar = tqdm(items, desc="predict", unit="img", disable=None if progress else True, file=sys.stderr)
    for path, stem in bar:
        try:
            image = read_rgb(path)
        except (OSError, ValueError) as exc:  # PIL: unidentified, truncated, decompression bomb
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            summary.failed.append((path, reason))
            tqdm.write(f"gasnas: skipped {path}: cannot read image ({reason})", file=sys.stderr)
            continue
        label = segment(model, image, mean, std, device)
        mask_path = out_dir / stem.parent / f"{stem.name}_mask.png"
        _save_png(mask_path, label, palette)
        summary.written.append(mask_path)
        if overlay:
            over_path = out_dir / stem.parent / f"{stem.name}_overlay.png"
            _save_png(over_path, blend(image, colorize(label, palette), alpha))
            summary.written.append(over_path)
    return summary
