"""Deployment: speed benchmarks against the torchvision peers (`bench`), ONNX export that is
checked for parity before it is written (`export`), and colourised predictions (`predict`).

Names are imported lazily so that `gasnas --help` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "BenchModel": "gasnas.deploy.bench",
    "run_bench": "gasnas.deploy.bench",
    "time_interleaved": "gasnas.deploy.bench",
    "markdown_table": "gasnas.deploy.bench",
    "measure_matmul_peak": "gasnas.deploy.bench",
    "export_onnx": "gasnas.deploy.export",
    "ExportReport": "gasnas.deploy.export",
    "ParityError": "gasnas.deploy.export",
    "synthetic_scene": "gasnas.deploy.export",
    "predict_images": "gasnas.deploy.predict",
    "resolve_palette": "gasnas.deploy.predict",
    "PEERS": "gasnas.models",
    "build_peer": "gasnas.models",
    "complexity": "gasnas.models",
    "load_network": "gasnas.models",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'gasnas.deploy' has no attribute {name!r}")
