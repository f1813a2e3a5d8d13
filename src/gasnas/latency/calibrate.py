"""Correct the table sum with a few measured whole networks.

A sum of separately timed parts misses what happens between them (cache traffic between ops,
allocator and dispatch overhead, threads waking up). The correction is kept affine in the op
weights, so the estimate stays differentiable and `predict == expected_ms(one-hot)`:

    predicted = fixed + offset_ms + Σ_s stage_scale[s] · (table sum of the edge ops in stage s)

`fixed` (stem + cell skeletons + head, from the table) is a constant for a space, so the offset
absorbs its error. The parameters are fitted by least squares on relative error (what MAPE
measures), lightly pulled toward (scale 1, offset 0), on derived nets sampled to span the
latency range (latency/sampling.py), measured on this machine. The record, with the nets it was
fitted on, is stored in the table under `calibration`; it applies to one skeleton and input size
(its `scope`), the op entries themselves stay shape-keyed and shared.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

import torch

from gasnas.config import LatencyConfig, SpaceConfig
from gasnas.latency.contention import Quiet
from gasnas.latency.lut import LatencyTable

RIDGE = 1e-2  # pull of each stage scale toward 1, relative to one net's squared relative error
CALIBRATION_SEED = 1000  # validation uses other seeds and skips the nets fitted on


def calibration_scope(space: SpaceConfig, num_classes: int, input_size: list[int] | tuple[int, int]) -> dict[str, Any]:
    """What a calibration depends on: the skeleton (not the op list or GGM) and the input size."""
    return {
        "stem_channels": list(space.stem_channels),
        "stage_channels": list(space.stage_channels),
        "cells_per_stage": list(space.cells_per_stage),
        "nodes": space.nodes,
        "head_channels": space.head_channels,
        **({"detail_channels": list(space.detail_channels)} if space.detail_channels else {}),
        **({"detail_fuse": space.detail_fuse} if space.detail_channels and space.detail_fuse != "conv" else {}),
        "num_classes": num_classes,
        "input_size": [int(input_size[0]), int(input_size[1])],
    }


def calibration_for(table: LatencyTable, scope: dict[str, Any]) -> dict[str, Any] | None:
    for rec in table.calibration:
        if rec.get("scope") == scope:
            return rec
    return None


def fit_calibration(fixed_ms: float, stage_ms: list[list[float]], measured_ms: list[float],
                    ridge: float = RIDGE) -> tuple[list[float], float]:
    """Least squares on relative residuals: measured ≈ fixed + offset + Σ_s a_s·x_s.

    Returns (stage scales, offset). Stages whose op sum never varies keep a scale near 1.
    """
    n, s = len(measured_ms), len(stage_ms[0]) if stage_ms else 0
    y = torch.tensor(measured_ms, dtype=torch.float64)
    x = torch.tensor(stage_ms, dtype=torch.float64).reshape(n, s)
    inv = 1.0 / y
    # Unknowns θ = [offset, a_0 .. a_{s-1}]; rows scaled by 1/y (relative error).
    design = torch.cat([torch.ones(n, 1, dtype=torch.float64), x], dim=1) * inv[:, None]
    target = (y - fixed_ms) * inv
    # Ridge rows: sqrt(ridge·n)·(a_s − 1) = 0.
    lam = (ridge * n) ** 0.5
    reg = torch.zeros(s, s + 1, dtype=torch.float64)
    reg[:, 1:] = torch.eye(s, dtype=torch.float64) * lam
    a = torch.cat([design, reg])
    b = torch.cat([target, torch.full((s,), lam, dtype=torch.float64)])
    theta = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    return [float(v) for v in theta[1:]], float(theta[0])


def calibrate(table: LatencyTable, space: SpaceConfig, num_classes: int, lat_cfg: LatencyConfig,
              samples: int = 16, seed: int = CALIBRATION_SEED, rounds: int = 2,
              input_size: list[int] | tuple[int, int] | None = None,
              progress: bool = True, quiet: Quiet | None = None) -> dict[str, Any]:
    """Measure `samples` spanning derived nets, fit the correction, store it in `table`
    (replacing one with the same scope) and return the record. The caller saves the table."""
    # here: the estimator, and validate through it, import this module
    from gasnas.latency.estimator import LatencyEstimator
    from gasnas.latency.sampling import spanning_genotypes
    from gasnas.latency.validate import measure_genotypes

    size = [int(v) for v in (input_size if input_size is not None else lat_cfg.input_size)]
    run_cfg = dataclasses.replace(lat_cfg, input_size=size)
    est = LatencyEstimator(space, num_classes, table, size, run_cfg, calibrated=False)
    genotypes = spanning_genotypes(est, samples, seed)
    per, contention = measure_genotypes(genotypes, run_cfg, rounds, seed, progress,
                                        desc="calibrating on derived nets", quiet=quiet)
    record = calibration_record(est, genotypes, per, seed=seed, contention=contention)
    store_calibration(table, record)
    return record


def calibration_record(est: Any, genotypes: list[Any], per: list[list[float]], seed: int,
                       contention: dict[str, Any] | None = None, ridge: float = RIDGE) -> dict[str, Any]:
    """Fit the correction for `est` (an uncalibrated LatencyEstimator) on measured genotypes
    (`per`: each genotype's per-pass medians; the lowest counts) and describe it."""
    measured = [min(r) for r in per]
    stage_ms = [est.stage_op_ms(g) for g in genotypes]
    scales, offset = fit_calibration(est.raw_fixed_ms, stage_ms, measured, ridge)
    raw = [est.raw_fixed_ms + sum(x) for x in stage_ms]
    fitted = [est.raw_fixed_ms + offset + sum(a * v for a, v in zip(scales, x)) for x in stage_ms]
    return {
        "model": "stage_affine",
        "scope": calibration_scope(est.space, est.num_classes, est.input_size),
        "stage_scale": scales,
        "offset_ms": offset,
        "fixed_ms": est.raw_fixed_ms,
        "ridge": ridge,
        "seed": seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rounds": max(len(r) for r in per) if per else 0,
        "contention": contention,
        "fit_mape_pct": _mape(fitted, measured),
        "raw_mape_pct": _mape(raw, measured),
        "fitted_on": [
            {"cells": [[list(e) for e in c.edges] for c in g.cells], "measured_ms": m,
             "passes_ms": r, "raw_predicted_ms": w, "fitted_ms": f}
            for g, m, r, w, f in zip(genotypes, measured, per, raw, fitted)
        ],
    }


def store_calibration(table: LatencyTable, record: dict[str, Any]) -> None:
    """Add `record` to the table, replacing one with the same scope."""
    table.calibration = [c for c in table.calibration if c.get("scope") != record["scope"]] + [record]


def _mape(pred: list[float], meas: list[float]) -> float:
    return 100.0 * sum(abs(p - m) / m for p, m in zip(pred, meas)) / max(1, len(meas))
