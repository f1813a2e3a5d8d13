"""Check the predictor against measured whole networks: `gasnas latency validate`.

Genotypes are sampled to span the space's latency range (latency/sampling.py), never the ones
the calibration was fitted on; each derived net is measured on the table's device/threads in
`rounds` passes (order shuffled per pass). A net's measured latency is the lowest of its
per-pass medians (other processes only ever add time); the spread between passes is the
measurement noise floor. Reported: Spearman ρ, Pearson r, MAPE (calibrated and raw table sum),
the noise floor, the slowest/fastest ratio, the CPU load of other processes while measuring,
a JSON report and a predicted-vs-measured scatter PNG.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from gasnas.config import LatencyConfig, SpaceConfig
from gasnas.fileio import atomic_write, write_json_atomic
from gasnas.latency.calibrate import CALIBRATION_SEED, calibration_record, store_calibration
from gasnas.latency.contention import Quiet
from gasnas.latency.estimator import LatencyEstimator, measure_genotype_ms
from gasnas.latency.lut import LatencyTable
from gasnas.latency.sampling import genotype_signature, spanning_genotypes
from gasnas.space.genotype import Genotype

VALIDATION_SEED = 0


# --------------------------------------------------------------------------- statistics


def _ranks(values: list[float]) -> list[float]:
    """Ranks 0..n-1 with ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(_ranks(x), _ranks(y))


def mape(pred: list[float], meas: list[float]) -> float:
    """Mean absolute percentage error of `pred` against `meas`."""
    return 100.0 * sum(abs(p - m) / m for p, m in zip(pred, meas)) / max(1, len(meas))


def accuracy(pred: list[float], meas: list[float]) -> dict[str, float]:
    ape = [100.0 * abs(p - m) / m for p, m in zip(pred, meas)]
    return {"spearman": spearman(pred, meas), "pearson": pearson(pred, meas),
            "mape_pct": mape(pred, meas), "max_ape_pct": max(ape) if ape else float("nan")}


# --------------------------------------------------------------------------- measuring


def measure_genotypes(genotypes: list[Genotype], lat_cfg: LatencyConfig, rounds: int = 2,
                      seed: int = 0, progress: bool = True, desc: str = "measuring derived nets",
                      quiet: Quiet | None = None) -> tuple[list[list[float]], dict[str, Any]]:
    """Per genotype, the median latency of each of `rounds` passes (pass order shuffled), and
    the `quiet` policy's summary (other processes' CPU load, disturbed measurements)."""

    quiet = quiet if quiet is not None else Quiet(max_wait_s=0.0, retries=0)
    gen = torch.Generator().manual_seed(seed)
    per: list[list[float]] = [[] for _ in genotypes]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(genotypes) * rounds, desc=desc, unit="net", leave=False)
    try:
        for _ in range(max(1, rounds)):
            for i in torch.randperm(len(genotypes), generator=gen).tolist():
                per[i].append(quiet.measure(lambda i=i: measure_genotype_ms(genotypes[i], lat_cfg)))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return per, quiet.summary()


def noise_floor(per: list[list[float]]) -> dict[str, float] | None:
    """The same nets re-measured: pass 2 against pass 1 (MAPE, and rank correlation)."""
    pairs = [(r[0], r[1]) for r in per if len(r) >= 2]
    if not pairs:
        return None
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"remeasure_mape_pct": mape(b, a), "remeasure_spearman": spearman(a, b), "nets": len(pairs)}


# --------------------------------------------------------------------------- validate


def validate(table: LatencyTable, space: SpaceConfig, num_classes: int, lat_cfg: LatencyConfig,
             samples: int = 50, seed: int = VALIDATION_SEED, rounds: int = 2,
             input_size: list[int] | tuple[int, int] | None = None, out_dir: str | Path | None = None,
             progress: bool = True, quiet: Quiet | None = None,
             calibrate_samples: int = 0) -> dict[str, Any]:
    """Sample, measure, compare; write `validate.json` and `validate.png` to `out_dir`.

    With `calibrate_samples` > 0 the calibration is (re)fitted first, on that many *other*
    sampled nets measured in the same passes as the validation nets (so slow drift of the
    machine between calibrating and validating does not count as predictor error); the new
    calibration is stored in `table` (the caller saves it).
    """

    t0 = time.perf_counter()
    size = [int(v) for v in (input_size if input_size is not None else lat_cfg.input_size)]
    run_cfg = dataclasses.replace(lat_cfg, input_size=size)
    raw_est = LatencyEstimator(space, num_classes, table, size, run_cfg, calibrated=False)
    fit_genotypes = (spanning_genotypes(raw_est, calibrate_samples, CALIBRATION_SEED)
                     if calibrate_samples > 0 else [])
    est = None if fit_genotypes else LatencyEstimator(space, num_classes, table, size, run_cfg)
    if fit_genotypes:
        fitted_on = {genotype_signature(g) for g in fit_genotypes}
    elif est is not None and est.calibration is not None:
        fitted_on = {_signature_of_cells(r["cells"]) for r in est.calibration.get("fitted_on", [])}
    else:
        fitted_on = set()
    genotypes = spanning_genotypes(raw_est, samples, seed, exclude=fitted_on)
    assert not fitted_on & {genotype_signature(g) for g in genotypes}
    per_all, contention = measure_genotypes(fit_genotypes + genotypes, run_cfg, rounds, seed,
                                            progress, quiet=quiet)
    per_fit, per = per_all[:len(fit_genotypes)], per_all[len(fit_genotypes):]
    if fit_genotypes:
        store_calibration(table, calibration_record(raw_est, fit_genotypes, per_fit,
                                                    seed=CALIBRATION_SEED, contention=contention))
        est = LatencyEstimator(space, num_classes, table, size, run_cfg)
    assert est is not None
    measured = [min(r) for r in per]
    predicted = [est.predict(g) for g in genotypes]
    raw = [raw_est.predict(g) for g in genotypes]
    report: dict[str, Any] = {
        "lut": table.source,
        "env": {k: table.env.get(k) for k in ("device", "device_name", "threads", "backend", "dtype",
                                              "allocator", "torch_version", "gasnas_version", "date")},
        "input_size": size,
        "num_classes": num_classes,
        "space": dataclasses.asdict(space),
        "samples": len(genotypes),
        "seed": seed,
        "rounds": rounds,
        "calibrated": est.calibration is not None,
        "calibration": ({k: est.calibration.get(k) for k in ("stage_scale", "offset_ms", "seed", "date",
                                                             "fit_mape_pct", "raw_mape_pct")}
                        | {"fitted_on": len(est.calibration.get("fitted_on", [])),
                           "fitted_in_this_session": bool(fit_genotypes)})
        if est.calibration is not None else None,
        "metrics": accuracy(predicted, measured),
        "raw_metrics": accuracy(raw, measured),
        "noise_floor": noise_floor(per),
        "measured_range_ms": [min(measured), max(measured)],
        "slowest_fastest_ratio": max(measured) / min(measured),
        "contention": contention,
        "wall_s": None,
        "nets": [
            {"predicted_ms": p, "raw_predicted_ms": r, "measured_ms": m, "passes_ms": ps,
             "bias": g.provenance.get("bias"), "cells": [[list(e) for e in c.edges] for c in g.cells]}
            for g, p, r, m, ps in zip(genotypes, predicted, raw, measured, per)
        ],
    }
    report["wall_s"] = time.perf_counter() - t0
    if out_dir is not None:
        out = Path(out_dir)
        write_json_atomic(out / "validate.json", report)
        scatter_png(out / "validate.png", predicted, measured, raw, _title(report))
    return report


def _signature_of_cells(cells: list[list[list[Any]]]) -> str:
    import json

    return json.dumps([[list(e) for e in c] for c in cells])


def _title(report: dict[str, Any]) -> str:
    m, env = report["metrics"], report["env"]
    return (f"{env.get('device_name')} · {env.get('backend')} · {env.get('threads')} threads · "
            f"{report['input_size'][0]}x{report['input_size'][1]}\n"
            f"ρ={m['spearman']:.3f}  r={m['pearson']:.3f}  MAPE={m['mape_pct']:.1f}%  "
            f"(n={report['samples']}{', calibrated' if report['calibrated'] else ''})")


def scatter_png(path: Path, predicted: list[float], measured: list[float],
                raw: list[float] | None = None, title: str = "") -> Path:
    """Predicted vs measured milliseconds with the y = x line (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    values = list(predicted) + list(measured) + list(raw or [])
    lo, hi = min(values) * 0.9, max(values) * 1.05
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--", label="y = x")
    if raw is not None:
        ax.scatter(measured, raw, s=14, facecolors="none", edgecolors="tab:orange", label="table sum (raw)")
    ax.scatter(measured, predicted, s=16, color="tab:blue", label="predicted")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()

    def write(p: Path) -> None:
        fig.savefig(p, format="png")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
