"""`gasnas export`: ONNX export that is checked before it is written.

The model is exported in memory (`timing.onnx_bytes`, the exporter the latency table and the
onnxruntime bench backend use), checked by `onnx.checker`, run in ONNX Runtime and compared with
the torch model on random inputs and on images (the user's, or synthetic street-like scenes):
max |Δlogit| must be ≤ `atol` (1e-4 for fp32) and the per-pixel argmax must agree on ≥ 99.9% of
pixels. Only then is the file written, atomically; a failing model leaves nothing behind.
With `dynamic=True` batch/height/width are dynamic axes and parity is checked at a second size
(batch 2) too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gasnas import __version__
from gasnas.errors import GasnasError
from gasnas.fileio import write_bytes_atomic as write_bytes
from gasnas.latency.measure import quiet_export
from gasnas.latency.timing import onnx_bytes, ort_session
from gasnas.models import IMAGENET_MEAN, IMAGENET_STD

ATOL = 1e-4
MIN_AGREEMENT = 0.999


@dataclass
class ParityCase:
    name: str  # e.g. "random 64x96 (batch 1)"
    max_abs_diff: float
    argmax_agreement: float
    passed: bool


@dataclass
class ExportReport:
    path: str | None
    input_size: tuple[int, int]
    dynamic: bool
    atol: float
    min_agreement: float
    cases: list[ParityCase] = field(default_factory=list)
    onnx_bytes: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.cases), default=float("nan"))

    @property
    def min_argmax_agreement(self) -> float:
        return min((c.argmax_agreement for c in self.cases), default=float("nan"))

    def lines(self) -> list[str]:
        out = [f"parity vs torch (atol {self.atol:g}, argmax agreement >= {self.min_agreement:.1%}):"]
        for c in self.cases:
            out.append(f"  {c.name:<40} max |Δlogit| {c.max_abs_diff:.3e}   argmax agreement "
                       f"{c.argmax_agreement:.4%}   {'ok' if c.passed else 'FAIL'}")
        return out


# --------------------------------------------------------------------------- inputs


def synthetic_scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic street-like RGB image (uint8 HxWx3): sky gradient, buildings, road with
    lane marks, a few cars, smooth texture and sensor noise. Natural-looking enough that logits
    are not those of pure noise; used when no real images are given."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.4, 0.55))
    t = (yy / max(horizon, 1))[..., None]
    img[:] = (1 - t) * np.array([90, 140, 220]) + t * np.array([190, 210, 235])  # sky
    x = 0
    while x < w:  # buildings
        bw = int(rng.integers(max(4, w // 12), max(5, w // 5)))
        top = int(rng.integers(int(horizon * 0.15), max(int(horizon * 0.15) + 1, horizon - 2)))
        img[top:horizon, x:x + bw] = rng.uniform(60, 180, 3)
        for wy in range(top + 4, horizon - 4, 8):  # windows
            img[wy:wy + 3, x + 2:x + bw - 2:6] = rng.uniform(20, 60)
        x += bw
    ground = yy >= horizon
    img[ground] = (95, 95, 100)  # road
    side = ground & ((xx < (yy - horizon) * -0.9 + w * 0.25) | (xx > (yy - horizon) * 0.9 + w * 0.75))
    img[side] = (150, 140, 125)  # sidewalk
    lane = ground & (np.abs(xx - w / 2) < 1 + (yy - horizon) * 0.02) & ((yy // 8) % 2 == 0)
    img[lane] = (235, 235, 235)
    for _ in range(int(rng.integers(1, 4))):  # cars
        cw = int(rng.integers(max(4, w // 10), max(5, w // 5)))
        ch = max(3, cw // 2)
        cy = int(rng.integers(horizon, max(horizon + 1, h - ch)))
        cx = int(rng.integers(0, max(1, w - cw)))
        img[cy:cy + ch, cx:cx + cw] = rng.uniform(20, 220, 3)
    tex = rng.normal(0, 1, (max(2, h // 8), max(2, w // 8), 1)).astype(np.float32)
    tex = torch.nn.functional.interpolate(torch.from_numpy(tex).permute(2, 0, 1)[None], size=(h, w),
                                          mode="bilinear", align_corners=False)[0, 0].numpy()
    img += 12 * tex[..., None] + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def to_tensor(images: list[np.ndarray], mean: Any, std: Any) -> torch.Tensor:
    """uint8 HxWx3 images (same size) → normalised float batch [N,3,H,W]."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 HxWx3 (EXIF orientation applied); OSError/ValueError if unreadable."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))


def load_images(paths: list[Path], size: tuple[int, int]) -> list[np.ndarray]:
    """Given images resized to `size`; an unreadable one is a GasnasError naming it."""
    out = []
    for p in paths:
        try:
            out.append(resize_rgb(read_rgb(p), size))
        except (OSError, ValueError) as exc:
            raise GasnasError(f"{p}: cannot read image ({exc})".splitlines()[0]) from None
    return out


# --------------------------------------------------------------------------- parity


def compare(ref: np.ndarray, got: np.ndarray, name: str, atol: float, min_agreement: float) -> ParityCase:
    if ref.shape != got.shape:
        return ParityCase(f"{name} (shape {got.shape} != {ref.shape})", float("inf"), 0.0, False)
    diff = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    ok = bool(np.isfinite(diff) and diff <= atol and agree >= min_agreement)
    return ParityCase(name, diff, agree, ok)


def second_size(size: tuple[int, int]) -> tuple[int, int]:
    """A different, non-proportional size to prove the dynamic axes work."""
    h, w = size
    return max(32, h - 32 if h > 64 else h + 32), w + 32


def _with_metadata(data: bytes, meta: dict[str, Any], input_size: tuple[int, int], dynamic: bool,
                   mean: Any, std: Any) -> tuple[bytes, Any]:
    """Stamp what inference needs (mean/std, classes, palette, input size) into the ONNX
    metadata and run the checker on exactly the bytes that will be written."""
    import onnx

    proto = onnx.load_from_string(data)
    props = {
        "producer": f"gasnas {__version__}",
        "input_size": f"{input_size[0]}x{input_size[1]}",
        "dynamic_axes": str(bool(dynamic)).lower(),
        "mean": json.dumps(list(mean)),
        "std": json.dumps(list(std)),
    }
    for key in ("class_names", "palette"):
        if meta.get(key) is not None:
            props[key] = json.dumps(meta[key])
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise GasnasError(f"ONNX checker rejected the export: {str(exc).splitlines()[0]}") from None
    return proto.SerializeToString(), proto


def export_onnx(model: nn.Module, out: str | Path | None, input_size: tuple[int, int],
                dynamic: bool = False, images: list[Path] | None = None,
                meta: dict[str, Any] | None = None, atol: float = ATOL,
                min_agreement: float = MIN_AGREEMENT, n_random: int = 2,
                n_synthetic: int = 2) -> ExportReport:
    """Export, check, compare with torch, and write `out` only if parity holds.

    Raises GasnasError (nothing written) when parity fails. `out=None` checks without writing."""
    meta = dict(meta or {})
    mean = meta.get("mean") or IMAGENET_MEAN
    std = meta.get("std") or IMAGENET_STD
    h, w = input_size
    model = model.eval().float().cpu()
    gen = torch.Generator().manual_seed(0)
    with quiet_export():
        raw = onnx_bytes(model, torch.randn(1, 3, h, w, generator=gen), dynamic=dynamic)
    data, _ = _with_metadata(raw, meta, input_size, dynamic, mean, std)
    session = ort_session(data, "cpu")
    report = ExportReport(str(out) if out is not None else None, input_size, dynamic, atol,
                          min_agreement, onnx_bytes=len(data))

    sizes = [(input_size, 1)] + ([(second_size(input_size), 2)] if dynamic else [])
    for size, batch in sizes:
        sh, sw = size
        tag = f"{sh}x{sw}"
        if images:
            pics, kind = load_images(images, size), f"{len(images)} image(s)"
        else:
            pics = [synthetic_scene(sh, sw, seed) for seed in range(n_synthetic)]
            kind = f"{n_synthetic} synthetic scene(s)"
        rand = torch.randn(n_random, 3, sh, sw, generator=gen)
        for name, x in ((f"random {tag}, {n_random} input(s)", rand),
                        (f"{kind} {tag}", to_tensor(pics, mean, std))):
            refs, gots = [], []
            for i in range(0, x.shape[0], batch):
                xb = x[i:i + batch]
                with torch.inference_mode():
                    refs.append(model(xb).numpy())
                gots.append(session.run(None, {"image": xb.numpy()})[0])
            label = name + (f" (batch {batch})" if batch > 1 else "")
            report.cases.append(compare(np.concatenate(refs), np.concatenate(gots), label, atol,
                                        min_agreement))
    if not report.passed:
        worst = max(report.cases, key=lambda c: (not c.passed, c.max_abs_diff))
        where = f"; nothing written to {out}" if out is not None else ""
        raise ParityError(report, f"ONNX parity failed on {worst.name}: max |Δlogit| "
                                  f"{worst.max_abs_diff:.3e} (limit {atol:g}), argmax agreement "
                                  f"{worst.argmax_agreement:.4%} (limit {min_agreement:.1%}){where}")
    if out is not None:
        write_bytes(out, data)
    return report


class ParityError(GasnasError):
    """Parity failed; carries the report so the CLI can print every number before the error."""

    def __init__(self, report: ExportReport, message: str) -> None:
        super().__init__(message)
        self.report = report
