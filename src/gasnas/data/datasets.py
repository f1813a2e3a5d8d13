"""Datasets: one `SegmentationDataset` over (image, label) pairs, built by `build_dataset`.

Every format returns `(image, label)`: image float32 [3,H,W] normalised with ImageNet MEAN/STD,
label int64 [H,W] with train ids 0..K-1 and `DataConfig.ignore_index` (255) for ignored pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gasnas.data.classes import IGNORE
from gasnas.data.layouts import EMPTY_SPLIT, Layout, Pair, get_layout
from gasnas.data.synthetic import ensure_synthetic
from gasnas.data.transforms import SegTransform, build_transform
from gasnas.errors import GasnasError


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H,W,3]; a bad file is a GasnasError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise GasnasError(f"{path}: unreadable image ({_one_line(exc)})") from None


def read_label(path: Path) -> np.ndarray:
    """Raw class indices [H,W] (uint8, or int32 for 16/32-bit PNGs); must be single-channel."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("L", "P"):
                return np.array(im)
            if im.mode == "1":  # a bilevel mask: classes 0 and 1
                return np.array(im).astype(np.uint8)
            if im.mode.startswith("I"):
                return np.array(im).astype(np.int32)
            mode = im.mode
    except (OSError, SyntaxError, ValueError) as exc:
        raise GasnasError(f"{path}: unreadable label ({_one_line(exc)})") from None
    raise GasnasError(f"{path}: label must be a single-channel image of class indices, got mode {mode}")


def map_label(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Raw values → train ids through a uint8[256] table (values beyond 0..255 → 255)."""
    if raw.dtype != np.uint8:
        raw = np.where((raw < 0) | (raw > 255), IGNORE, raw).astype(np.uint8)
    return lut[raw]


def load_pair(pair: Pair, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [H,W,3], train ids uint8 [H,W]); sizes must match."""
    img = read_image(pair.image)
    lbl = map_label(read_label(pair.label), lut)
    if img.shape[:2] != lbl.shape:
        raise GasnasError(
            f"{pair.image}: size {img.shape[1]}x{img.shape[0]} differs from its label "
            f"{pair.label} ({lbl.shape[1]}x{lbl.shape[0]})"
        )
    return img, lbl


class SegmentationDataset(Dataset):
    """(image, label) pairs with one label table per pair and a paired transform."""

    def __init__(
        self,
        pairs: list[Pair],
        luts: list[np.ndarray],
        transform: SegTransform | None,
        class_names: list[str],
        ignore_index: int = IGNORE,
    ):
        assert len(pairs) == len(luts)
        self.pairs = list(pairs)
        self.luts = list(luts)
        self.transform = transform
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed (RGB uint8 [H,W,3], train ids uint8 [H,W]) — for viewing and checks."""
        return load_pair(self.pairs[index], self.luts[index])

    def class_pixel_counts(self, progress: bool = False) -> np.ndarray:
        """Labelled pixels per class over the whole split, from the untransformed labels only
        (no image is decoded): what class-balanced losses weigh by. int64 [K]."""
        from tqdm import tqdm

        counts = np.zeros(self.num_classes, dtype=np.int64)
        for pair, lut in tqdm(list(zip(self.pairs, self.luts)), desc="class frequencies", unit="label",
                              disable=not progress, leave=False):
            ids = map_label(read_label(pair.label), lut)
            counts += np.bincount(ids.ravel(), minlength=256)[: self.num_classes]
        return counts

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, lbl = self.load_raw(index)
        image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        label = torch.from_numpy(np.ascontiguousarray(lbl))
        if self.transform is not None:
            image, label = self.transform(image, label)
        else:
            image, label = image.float().div_(255.0), label.long()
        if self.ignore_index != IGNORE:
            label = torch.where(label == IGNORE, torch.full_like(label, self.ignore_index), label)
        return image, label


def _layout(cfg: Any) -> Layout:
    return get_layout(cfg.format, cfg.root)


def class_names(cfg: Any) -> list[str]:
    """The K class names of the configured dataset (folder: from ROOT/classes.yaml)."""
    return _layout(cfg).class_names()


def palette(cfg: Any) -> np.ndarray:
    """[K,3] uint8 colours, one per class."""
    return _layout(cfg).palette()


def build_dataset(cfg: Any, split: str, train: bool) -> SegmentationDataset:
    """The dataset of one split of `cfg` (a `DataConfig`); train=True → train transforms.

    `cfg.max_train_images` limits `cfg.train_split`, `cfg.max_val_images` limits `cfg.val_split`
    (the first N pairs in sorted order). A `synthetic` root is generated first if incomplete.
    """
    if cfg.format == "synthetic":

        ensure_synthetic(cfg)
    layout = _layout(cfg)
    layout.require_root()
    names = layout.class_names()
    if cfg.num_classes != len(names):
        raise GasnasError(
            f"data.num_classes is {cfg.num_classes} but the {cfg.format} dataset at {cfg.root} "
            f"has {len(names)} classes: set data.num_classes={len(names)}"
        )
    listing = layout.listing(split)
    if not listing.pairs:
        where = next((p.path for p in listing.problems if p.kind == EMPTY_SPLIT), layout.root / split)
        raise GasnasError(f"{where}: empty split '{split}' (no image/label pairs; see gasnas data check {cfg.root})")
    others = [p for p in listing.problems if p.kind != EMPTY_SPLIT]
    if others:
        warnings.warn(
            f"{cfg.root} split '{split}': {len(others)} file(s) ignored, first: "
            f"{others[0].format(layout.root)} (run `gasnas data check {cfg.root}`)",
            stacklevel=2,
        )
    pairs = listing.pairs
    limit = (
        cfg.max_train_images if split == cfg.train_split
        else cfg.max_val_images if split == cfg.val_split
        else None
    )  # fmt: skip
    if limit is not None:
        pairs = pairs[: max(0, int(limit))]
        if not pairs:
            raise GasnasError(f"{layout.root}: a limit of {limit} images selects nothing from split '{split}'")
    luts = [layout.label_table(p.label)[0] for p in pairs]
    return SegmentationDataset(pairs, luts, build_transform(cfg, train), names, cfg.ignore_index)
