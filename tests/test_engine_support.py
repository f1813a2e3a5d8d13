"""Shared helpers for the engine tests (no tests here): tiny CamVid-layout data, tiny configs,
one shared latency table, single-thread deterministic torch.

Everything is cached per test process, so each test module that imports it pays once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

H, W = 32, 48
REPO = Path(__file__).resolve().parents[1]
_CACHE: dict[str, Path] = {}

TINY_SPACE = [
    "space.stem_channels=[4,4,8]",
    "space.stage_channels=[8,16,16]",
    "space.cells_per_stage=[1,1,1]",
    "space.head_channels=8",
]


def make_camvid(root: Path, n_train: int = 16, n_val: int = 2, seed: int = 0) -> Path:
    """CamVid layout (train/ trainannot/ val/ valannot/), labels 0..10 and 11 = ignored.
    Each image is rectangles of class-coloured pixels plus noise, so a net can learn it."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (12, 3))
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.full((H, W), int(rng.integers(0, 11)), np.uint8)
            for _ in range(5):
                y0, x0 = int(rng.integers(0, H - 6)), int(rng.integers(0, W - 6))
                y1, x1 = y0 + int(rng.integers(4, H // 2)), x0 + int(rng.integers(4, W // 2))
                label[y0:y1, x0:x1] = int(rng.integers(0, 12))
            image = (colours[label] + rng.normal(0, 12, (H, W, 3))).clip(0, 255).astype(np.uint8)
            name = f"{split}_{i:03d}.png"
            Image.fromarray(image).save(root / split / name)
            Image.fromarray(label).save(root / f"{split}annot" / name)
    return root


def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "data" not in _CACHE:
        _CACHE["data"] = make_camvid(tmp_path_factory.mktemp("camvid"))
    return _CACHE["data"]


def tiny_overrides(data: Path, out_dir: Path, name: str = "run", *extra: str) -> list[str]:
    """--set items for a seconds-long run on CPU."""
    return [
        *TINY_SPACE,
        "data.format=camvid", f"data.root={data}", f"data.crop_size=[{H},{W}]",
        "data.scale_range=[0.75,1.25]", "data.color_jitter=0.1",
        f"latency.input_size=[{H},{W}]", "latency.repeats=1", "latency.warmup=0", "latency.threads=1",
        "search.epochs=2", "search.warmup_epochs=1", "search.batch_size=2",
        "search.max_steps_per_epoch=3", "search.measure_derived=false",
        "train.epochs=2", "train.batch_size=2", "train.eval_every=1", "train.ohem_min_kept=200",
        "train.max_steps_per_epoch=3",
        "deterministic=true", f"out_dir={out_dir}", f"name={name}",
        *extra,
    ]


def tiny_config(data: Path, out_dir: Path, name: str = "run", *extra: str):
    from gasnas.config import load_config

    return load_config(None, tiny_overrides(data, out_dir, name, *extra))


def shared_lut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One calibrated latency table for the tiny space, reused by every run that must be
    reproducible (measured timings differ run to run; a shared table makes E[Lat] identical)."""
    if "lut" not in _CACHE:
        from gasnas.latency import get_or_build_lut

        root = data_root(tmp_path_factory)
        out = tmp_path_factory.mktemp("lut")
        cfg = tiny_config(root, out, "lut")
        get_or_build_lut(cfg, out, cfg.data.num_classes, progress=False, calibrate_samples=4)
        _CACHE["lut"] = out / "lut.json"
    return _CACHE["lut"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


class NoLatency:
    """A LatencyBudget stand-in for architecture-step tests: no latency term; it keeps the
    cross-entropy gradients the step hands it."""

    def loss(self, weights, *args):
        zero = weights[0].sum() * 0.0
        return zero, zero

    def record_ce_gradients(self, grads) -> None:
        self.grads = grads


def mixed_op_with_random_bn(stride: int, seed: int, running_var: bool = False, ops: list[str] | None = None):
    """A plain (unfused) float64 MixedOp over `ops` (default: every default op), 6 channels, whose
    BatchNorms have random affine parameters (and running variances): folding BN then changes numbers."""
    import torch

    from gasnas.config import DEFAULT_OPS
    from gasnas.space.cell import MixedOp

    torch.manual_seed(seed)
    op = MixedOp(list(ops or DEFAULT_OPS), 6, stride, fused=False).double()
    with torch.no_grad():
        for m in op.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_()
                m.bias.normal_()
                if running_var:
                    m.running_var.uniform_(0.5, 2.0)
    return op
