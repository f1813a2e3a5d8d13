"""Resumable checkpoints: everything a run needs to continue bit-for-bit after a crash.

A search or training checkpoint (`RUN/checkpoints/last.pt`, `RUN/train/last.pt`) holds the
model (α and GGM included for a search), the optimizers, λ, the position
(epoch, step within the epoch, global step), the epoch's running loss sums, and the state of
every RNG (python, numpy, torch CPU and CUDA). Learning-rate schedules are pure functions of the
position, and the data order of `engine/sampling.py` a pure function of (seed, epoch, step), so
restoring the position restores both. Files are written atomically (`fileio.torch_save_atomic`:
a crash mid-write leaves the previous checkpoint intact) and load with weights_only=True.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gasnas.errors import GasnasError
from gasnas.fileio import torch_load, torch_save_atomic

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The state of every global RNG, in types that load with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomic write; adds the format version."""
    return torch_save_atomic({"format_version": FORMAT_VERSION, **payload}, path)


def load(path: str | Path, kind: str) -> dict[str, Any]:
    """A checkpoint of `kind` ('search' or 'train'); a wrong or unreadable file is a GasnasError."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else None
        raise GasnasError(f"{path}: not a resumable {kind} checkpoint (kind: {found!r})")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise GasnasError(f"{path}: checkpoint format {ckpt.get('format_version')!r} is not supported "
                          f"(this gasnas writes {FORMAT_VERSION})")
    return ckpt


def resume_file(run_dir: str | Path, relative: str) -> Path:
    """RUN_DIR/relative, or a one-line error saying what was expected."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GasnasError(f"{run_dir}: no such run folder to resume")
    path = run_dir / relative
    if not path.is_file():
        raise GasnasError(f"{run_dir}: nothing to resume ({relative} not found)")
    return path


def position_text(epoch: int, step: int) -> str:
    """User-facing position, 1-based: 'epoch 2 step 5' means 5 steps of epoch 2 were done."""
    return f"epoch {epoch + 1} step {step}"


def restore_position(run: Any, ck: dict[str, Any]) -> None:
    """What resuming a search and a training run share: where the run was (epoch, step, global
    step), its running sums, every RNG, and metrics.jsonl cut back to the finished epochs."""
    run.epoch, run.step, run.global_step = int(ck["epoch"]), int(ck["step"]), int(ck["global_step"])
    run.accum = dict(ck["accum"])
    set_rng_state(ck["rng"])
    done = run.epoch
    run.metrics.truncate(lambda r: int(r.get("epoch", 0)) <= done)
