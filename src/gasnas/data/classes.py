"""Class names, colour palettes and raw-label → train-id tables for every dataset format.

Every loader turns a raw label PNG into train ids 0..K-1 with one lookup table
(`uint8[256]`, raw value → train id, 255 = ignored). `colorize` draws train ids with a palette.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from gasnas.errors import GasnasError

IGNORE = 255

# SegNet CamVid: 11 classes, raw value 11 = Unlabelled (ignored in loss and mIoU).
CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_UNLABELLED = 11
CAMVID_PALETTE = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
        [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
    ],
    dtype=np.uint8,
)  # fmt: skip


def identity_lut(num_classes: int) -> np.ndarray:
    """raw v → v for v < num_classes, everything else → 255."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[:num_classes] = np.arange(num_classes, dtype=np.uint8)
    return lut


def valid_values(values: list[int] | range) -> np.ndarray:
    """bool[256]: which raw label values belong to the class set (classes + ignore values)."""
    ok = np.zeros(256, dtype=bool)
    ok[list(values)] = True
    return ok


CAMVID_LUT = identity_lut(len(CAMVID_CLASSES))
CAMVID_VALID = valid_values(range(len(CAMVID_CLASSES) + 1))  # 0..10 + 11 unlabelled


# --------------------------------------------------------------------------- cityscapes


@lru_cache(maxsize=1)
def _cityscapes() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(19 trainId names, palette [19,3], labelId→trainId lut, valid labelIds) from the official table."""
    from cityscapesscripts.helpers.labels import labels

    names: list[str] = [""] * 19
    palette = np.zeros((19, 3), dtype=np.uint8)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    valid = np.zeros(256, dtype=bool)
    for lab in labels:
        if lab.id < 0:  # license plate: not a value in labelIds PNGs
            continue
        valid[lab.id] = True
        if 0 <= lab.trainId < 19:
            lut[lab.id] = lab.trainId
            names[lab.trainId] = lab.name
            palette[lab.trainId] = lab.color
    return names, palette, lut, valid


def cityscapes_classes() -> list[str]:
    return list(_cityscapes()[0])


def cityscapes_palette() -> np.ndarray:
    return _cityscapes()[1].copy()


def cityscapes_label_lut(label_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(lut, valid) for a gtFine label file: `*_labelIds.png` is mapped, `*_labelTrainIds.png` kept."""
    if str(label_path).endswith("_labelTrainIds.png"):
        return identity_lut(19), valid_values(list(range(19)) + [IGNORE])
    _, _, lut, valid = _cityscapes()
    return lut, valid


# --------------------------------------------------------------------------- folder (custom)


def default_palette(k: int) -> np.ndarray:
    """A fixed, distinguishable palette for k classes (PASCAL VOC bit-interleaving)."""
    out = np.zeros((k, 3), dtype=np.uint8)
    for i in range(k):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def read_classes_yaml(root: str | Path) -> tuple[list[str], np.ndarray, int]:
    """`ROOT/classes.yaml` → (names, palette [K,3] uint8, ignore value). Errors name the file."""
    import yaml

    path = Path(root) / "classes.yaml"
    if not path.is_file():
        raise GasnasError(f"{path}: not found (a folder dataset needs classes.yaml with 'names: [...]')")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        raise GasnasError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise GasnasError(f"{path}: expected a mapping with 'names', 'colors', 'ignore'")
    names = data.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise GasnasError(f"{path}: 'names' must be a non-empty list of class names")
    names = [str(n) for n in names]
    ignore = data.get("ignore", IGNORE)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255:
        raise GasnasError(f"{path}: 'ignore' must be an integer 0..255, got {ignore!r}")
    if ignore < len(names):
        raise GasnasError(f"{path}: 'ignore' ({ignore}) collides with class index {ignore} ({names[ignore]})")
    if len(names) > 255:
        raise GasnasError(f"{path}: at most 255 classes are supported, got {len(names)}")
    colors = data.get("colors")
    if colors is None:
        palette = default_palette(len(names))
    else:
        ok = (
            isinstance(colors, list)
            and len(colors) == len(names)
            and all(
                isinstance(c, (list, tuple)) and len(c) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
                for c in colors
            )
        )  # fmt: skip
        if not ok:
            raise GasnasError(f"{path}: 'colors' must be {len(names)} [r, g, b] triples of 0..255")
        palette = np.array(colors, dtype=np.uint8)
    return names, palette, ignore


# --------------------------------------------------------------------------- drawing


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Train ids [H,W] → RGB uint8 [H,W,3]; 255 (and anything outside the palette) → black."""
    label = np.asarray(label)
    palette = np.asarray(palette, dtype=np.uint8)
    lut = np.zeros((256, 3), dtype=np.uint8)
    k = min(len(palette), 255)
    lut[:k] = palette[:k]
    idx = np.where((label >= 0) & (label < 256), label, IGNORE).astype(np.intp)
    return lut[idx]
