"""Data: datasets (synthetic, camvid, cityscapes, folder), transforms, synth, check, download.

Public face:
    build_dataset(cfg, split, train) -> Dataset of (image float32 [3,H,W], label int64 [H,W])
    class_names(cfg), palette(cfg), colorize(label, palette), ensure_synthetic(cfg)
    MEAN, STD, denormalize(t)

Imports of submodules are lazy so `import gasnas.data` stays cheap (no torch until needed).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "build_dataset": "gasnas.data.datasets",
    "class_names": "gasnas.data.datasets",
    "palette": "gasnas.data.datasets",
    "SegmentationDataset": "gasnas.data.datasets",
    "colorize": "gasnas.data.classes",
    "CAMVID_CLASSES": "gasnas.data.classes",
    "IGNORE": "gasnas.data.classes",
    "ensure_synthetic": "gasnas.data.synthetic",
    "write_synthetic": "gasnas.data.synthetic",
    "render_scene": "gasnas.data.synthetic",
    "MEAN": "gasnas.data.transforms",
    "STD": "gasnas.data.transforms",
    "denormalize": "gasnas.data.transforms",
    "build_transform": "gasnas.data.transforms",
    "check_dataset": "gasnas.data.check",
    "download_camvid": "gasnas.data.download",
    "show_grid": "gasnas.data.show",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gasnas.data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
