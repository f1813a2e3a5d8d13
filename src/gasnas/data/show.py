"""`gasnas data show`: a grid of image | colourised label | overlay, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gasnas.data.classes import IGNORE, colorize
from gasnas.data.datasets import load_pair
from gasnas.data.layouts import detect_format, get_layout
from gasnas.errors import GasnasError
from gasnas.fileio import atomic_write


def show_grid(
    root: str | Path,
    out: str | Path,
    n: int = 8,
    fmt: str | None = None,
    split: str | None = None,
) -> Path:
    """Draw `n` pairs spread evenly over a split (default: train, else the first split)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if n < 1:
        raise GasnasError(f"-n {n}: need at least one image")
    root, out = Path(root), Path(out)
    fmt = fmt or detect_format(root)
    layout = get_layout(fmt, root)
    layout.require_root()
    if split is None:
        splits = layout.splits()
        if not splits:
            raise GasnasError(f"{root}: no splits found for format {fmt}")
        split = "train" if "train" in splits else splits[0]
    pairs = layout.listing(split).pairs
    if not pairs:
        raise GasnasError(f"{layout.split_dir(split)}: empty split '{split}' (no image/label pairs)")
    names, pal = layout.class_names(), layout.palette()
    idx = np.unique(np.linspace(0, len(pairs) - 1, min(n, len(pairs))).round().astype(int))
    rows = []
    for i in idx:
        img, lbl = load_pair(pairs[i], layout.label_table(pairs[i].label)[0])
        color = colorize(lbl, pal)
        overlay = np.where((lbl != IGNORE)[:, :, None], (0.5 * img + 0.5 * color), img).astype(np.uint8)
        rows.append((pairs[i].image.name, img, color, overlay, lbl))
    h, w = rows[0][1].shape[:2]
    cell = 3.2
    fig = Figure(figsize=(3 * cell, len(rows) * cell * h / w + 1.0), dpi=100)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (name, *panels, _) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(["image", "label", "overlay"][c], fontsize=9)
        axes[r][0].set_ylabel(name, fontsize=6)
    present = sorted(set(np.unique(np.concatenate([r[4].ravel() for r in rows]))) - {IGNORE})
    handles = [Patch(color=pal[k] / 255.0, label=names[k]) for k in present if k < len(names)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"{root.name} / {split} ({fmt}, {len(pairs)} pairs)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if handles else 0, 1, 0.97))
    ext = out.suffix.lstrip(".").lower() or "png"
    atomic_write(out, lambda p: fig.savefig(p, format=ext))
    return out
