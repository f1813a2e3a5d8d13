"""Pictures a person would rather look at than numbers: curves, α per cell, cells, predictions.

Every function writes one PNG atomically (matplotlib, Agg backend) and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gasnas.data.classes import colorize  # noqa: E402
from gasnas.fileio import atomic_write  # noqa: E402


def _save(fig: Any, path: str | Path) -> Path:
    out = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return out


def plot_curves(rows: list[dict[str, Any]], path: str | Path, keys: list[str] | None = None,
                x_key: str = "epoch") -> Path:
    """One small panel per numeric metric in `rows` (e.g. metrics.jsonl), against `x_key`."""
    if keys is None:
        keys = []
        for row in rows:
            for k, v in row.items():
                if k != x_key and k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.append(k)
    keys = keys or ["(no metrics)"]
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r.get(x_key, i), r[key]) for i, r in enumerate(rows)
               if isinstance(r.get(key), (int, float)) and r.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_convergence(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """How a search settles, per epoch: α' spread per cell, the share of kept edges whose op
    changed (and the skip share), the GGM's adjacency entropy, λ and the derived net's latency
    against the budget."""
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    ax = axes[0, 0]
    spreads = np.array([r.get("alpha_spread") or [] for r in rows], dtype=object)
    n_cells = max((len(s) for s in spreads), default=0)
    cmap = plt.get_cmap("viridis")
    for k in range(n_cells):
        pts = [(e, s[k]) for e, s in zip(epochs, spreads) if len(s) > k]
        if pts:
            ax.plot(*zip(*pts), color=cmap(k / max(1, n_cells - 1)), lw=1, label=f"cell {k}" if k in (0, n_cells - 1) else None)
    ax.plot(epochs, [r.get("alpha_spread_mean") for r in rows], color="k", lw=2, label="mean")
    ax.axhline(2.0, color="tab:red", ls="--", lw=0.8)
    ax.set_title("α' spread per cell (log p_max/p_min)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for key, label in (("changed_fraction", "kept edges changed"), ("skip_share", "skip_connect share")):
        pts = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("genotype movement", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    pts = [(e, r["ggm_adjacency_entropy"]) for e, r in zip(epochs, rows) if r.get("ggm_adjacency_entropy") is not None]
    if pts:
        ax.plot(*zip(*pts), marker="o", ms=3)
    ax.set_title("GGM adjacency entropy (1 = uniform)", fontsize=9)
    ax = axes[1, 1]
    for key in ("predicted_ms", "measured_ms", "derived_ms_mean", "budget_ms"):
        pts = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=key)
    ax.set_ylabel("ms", fontsize=8)
    twin = ax.twinx()
    pts = [(e, r["lambda"]) for e, r in zip(epochs, rows) if r.get("lambda") is not None]
    if pts:
        twin.plot(*zip(*pts), color="tab:gray", ls=":", label="λ")
        twin.set_yscale("log")
    ax.set_title("derived-net latency, budget and λ (dotted)", fontsize=9)
    ax.legend(fontsize=7)
    for a in axes.flat:
        a.set_xlabel("epoch", fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_alphas(op_weights: list[Any], ops: list[str], path: str | Path) -> Path:
    """Heat-map of softmax(α'_k) per cell: rows = edges, columns = ops."""
    mats = [np.asarray(w.detach().cpu() if hasattr(w, "detach") else w, dtype=float) for w in op_weights]
    n = len(mats)
    cols = min(7, n) or 1
    nrows = math.ceil(n / cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(2.1 * cols, 2.6 * nrows), squeeze=False)
    for k, (ax, m) in enumerate(zip(axes.flat, mats)):
        ax.imshow(m, vmin=0, vmax=max(1e-6, float(m.max())), cmap="viridis", aspect="auto")
        ax.set_title(f"cell {k}", fontsize=8)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels([o.replace("dil_sep_conv_3x3_", "dil_").replace("sep_conv_3x3", "sep3")
                            .replace("max_pool_3x3", "pool").replace("skip_connect", "skip")
                            .replace("conv_3x3", "conv3") for o in ops], rotation=90, fontsize=6)
        ax.set_yticks(range(m.shape[0]))
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _state_name(i: int) -> str:
    return {0: "c[k-2]", 1: "c[k-1]"}.get(i, f"n{i - 2}")


def plot_genotype(genotype: Any, path: str | Path) -> Path:
    """Every cell as a small DAG: inputs on the left, nodes in the middle, output on the right."""
    cells = genotype.cells
    nodes = genotype.space.nodes
    cols = min(4, len(cells)) or 1
    nrows = math.ceil(len(cells) / cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 2.9 * nrows), squeeze=False)
    pos = {0: (0.0, 0.8), 1: (0.0, 0.2)}
    for j in range(nodes):
        pos[2 + j] = (0.45 + 0.35 * (j / max(1, nodes - 1)) * (nodes > 1), 0.15 + 0.7 * (j + 0.5) / nodes)
    out_pos = (1.0, 0.5)
    for k, (ax, cell) in enumerate(zip(axes.flat, cells)):
        ax.set_xlim(-0.15, 1.15)
        ax.set_ylim(-0.05, 1.05)
        ax.axis("off")
        ax.set_title(f"cell {k} ({'reduction' if cell.reduction else 'normal'})", fontsize=8)
        for src, dst, op in cell.edges:
            (x0, y0), (x1, y1) = pos[src], pos[2 + dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 1})
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, op.replace("dil_sep_conv_3x3_", "dil_sep_"),
                    fontsize=6, ha="center", va="center", color="darkblue",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
        for j in range(nodes):
            ax.annotate("", xy=out_pos, xytext=pos[2 + j],
                        arrowprops={"arrowstyle": "->", "color": "0.7", "lw": 0.8, "ls": "--"})
        for i, (x, y) in pos.items():
            ax.text(x, y, _state_name(i), fontsize=7, ha="center", va="center",
                    bbox={"boxstyle": "round", "fc": "lightyellow" if i < 2 else "lightblue"})
        ax.text(*out_pos, "out", fontsize=7, ha="center", va="center",
                bbox={"boxstyle": "round", "fc": "lightgreen"})
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_predictions(images: list[np.ndarray], labels: list[np.ndarray], preds: list[np.ndarray],
                     palette: np.ndarray, path: str | Path) -> Path:
    """Rows of image | ground truth | prediction."""
    n = max(1, len(images))
    fig, axes = plt.subplots(n, 3, figsize=(9, 2.4 * n), squeeze=False)
    for r, (img, lab, pred) in enumerate(zip(images, labels, preds)):
        for c, (pic, title) in enumerate(((img, "image"), (colorize(lab, palette), "ground truth"),
                                          (colorize(pred, palette), "prediction"))):
            axes[r, c].imshow(pic)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_latency_scatter(predicted: list[float], measured: list[float], path: str | Path,
                         title: str = "") -> Path:
    """Predicted vs measured latency with the y = x line."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(measured, predicted, s=14)
    lo = min(min(predicted, default=0), min(measured, default=0))
    hi = max(max(predicted, default=1), max(measured, default=1))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)
