"""Differentiable expected latency, and how it enters the search loss.

E[Lat](α') = Σ_k Σ_e Σ_o w_{k,e,o} · cost_k(o, shape_{k,e}) + fixed,   w = softmax(α'_k)

cost_k(o, ·) is the table's entry for that op shape (`none` costs 0) times the calibration
scale of cell k's stage; `fixed` is stem + every cell's skeleton + head (from the table) plus the
calibration offset (latency/calibrate.py). Both are constants, so E[Lat] stays linear in the op
weights and `predict(genotype)` is exactly `expected_ms(genotype_weights(genotype))`.

Losses (`latency.loss`; λ is `latency.weight`, possibly adapted between epochs):
  linear  λ·E                                 λ in 1/ms (default 0.002)
  log     λ·β·log(E / R)                      R = target_ms, or 1 ms when unset (R only shifts
          the value); the gradient λβ/E is scale-free: a 10% latency cut is worth the same
          anywhere. This is the logarithm of the multiplicative ProxylessNAS/MnasNet factor
          (E/R)^β, added to the task loss; λ is unitless here (try 0.1–1).
  target  λ·relu(E / T − 1)                   zero within the budget T = target_ms
λ, the warm-in and the budget of `target` mode are set per step by latency/budget.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gasnas.config import Config, LatencyConfig, SpaceConfig
from gasnas.errors import GasnasError
from gasnas.latency.calibrate import calibrate, calibration_for, calibration_scope
from gasnas.latency.keys import Layout, space_layout
from gasnas.latency.lut import ENV_FIELDS, LatencyTable, current_environment
from gasnas.latency.measure import build_lut, measure_into, quiet_export
from gasnas.latency.timing import measure_model
from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import Genotype, genotype_weights
from gasnas.space.ops import OPS

DEFAULT_CALIBRATION_SAMPLES = 16


def lat_cfg_for_table(lut: LatencyTable) -> LatencyConfig:
    """A LatencyConfig that measures like `lut` was measured (for keys missing from it)."""
    env = lut.env
    cfg = LatencyConfig()
    return LatencyConfig(
        device=env.get("device", cfg.device), backend=env.get("backend", cfg.backend),
        threads=env.get("threads"), dtype=env.get("dtype", cfg.dtype),
        warmup=int(env.get("warmup", cfg.warmup)), repeats=int(env.get("repeats", cfg.repeats)))


def ensure_entries(lut: LatencyTable, layout: Layout, lat_cfg: LatencyConfig,
                   progress: bool = False) -> list[str]:
    """Measure the keys `layout` needs that `lut` lacks (if `measure_missing`), else refuse."""
    items = layout.items()
    missing = lut.missing([it.key for it in items])
    if not missing:
        return []
    if not lat_cfg.measure_missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GasnasError(f"{lut.source}: no entry '{missing[0]}'{more}; rebuild the table for this "
                          f"space/input size or set latency.measure_missing=true")
    return measure_into(lut, items, lat_cfg, progress=progress, desc="missing latency entries")


class LatencyEstimator:
    """Expected latency of a supernet's op weights (differentiable) and of genotypes.

    `input_size` None takes the table's own (`lut.input_size`). With `lat_cfg`, the table's
    environment must match it (unless `allow_foreign_lut`), and keys it lacks are measured
    under it (if `measure_missing`); without, under the table's own settings.
    `calibrated=False` ignores the table's calibration (the raw per-entry sum).
    """

    def __init__(self, space: SpaceConfig, num_classes: int, lut: LatencyTable,
                 input_size: tuple[int, int] | list[int] | None, lat_cfg: LatencyConfig | None = None,
                 *, calibrated: bool = True) -> None:
        self.space, self.num_classes, self.lut = space, num_classes, lut
        if input_size is None:
            input_size = lut.input_size
            if input_size is None:
                raise GasnasError(f"{lut.source}: the table records no input size; pass one")
        self.input_size = [int(input_size[0]), int(input_size[1])]
        if lat_cfg is not None:
            lut.check_environment(current_environment(lat_cfg), lat_cfg.allow_foreign_lut)
        self.lat_cfg = lat_cfg if lat_cfg is not None else lat_cfg_for_table(lut)
        self.layout = space_layout(space, num_classes, self.input_size)
        self.measured_now = ensure_entries(lut, self.layout, self.lat_cfg)

        free = [OPS[o].free for o in space.ops]
        self.raw_costs = [
            torch.tensor([[0.0 if free[i] else lut[e.item(op).key] for i, op in enumerate(space.ops)]
                          for e in cell.edges], dtype=torch.float64)
            for cell in self.layout.cells]
        self.raw_fixed_ms = sum(lut[it.key] for it in self.layout.fixed_items())
        self.stages = [cell.plan.stage for cell in self.layout.cells]

        self.calibration = calibration_for(lut, calibration_scope(space, num_classes, self.input_size)) \
            if calibrated else None
        scales = [1.0] * (max(self.stages) + 1 if self.stages else 1)
        offset = 0.0
        if self.calibration is not None:
            scales = [float(s) for s in self.calibration["stage_scale"]]
            offset = float(self.calibration["offset_ms"])
        self.stage_scale, self.offset_ms = scales, offset
        self.costs = [c * scales[s] for c, s in zip(self.raw_costs, self.stages)]
        self.constant_ms = self.raw_fixed_ms + offset
        self._cache: dict[tuple[Any, Any], list[torch.Tensor]] = {}

    def _costs_like(self, ref: torch.Tensor) -> list[torch.Tensor]:
        key = (ref.device, ref.dtype)
        if key not in self._cache:
            self._cache[key] = [c.to(device=ref.device, dtype=ref.dtype) for c in self.costs]
        return self._cache[key]

    def expected_ms(self, op_weights: list[torch.Tensor]) -> torch.Tensor:
        """Σ_k Σ_e Σ_o w·cost + fixed: a scalar, differentiable w.r.t. every op weight."""
        if len(op_weights) != len(self.costs):
            raise ValueError(f"expected op weights for {len(self.costs)} cells, got {len(op_weights)}")
        costs = self._costs_like(op_weights[0])
        total = op_weights[0].new_tensor(self.constant_ms)
        for k, (w, c) in enumerate(zip(op_weights, costs)):
            if w.shape != c.shape:
                raise ValueError(f"cell {k}: op weights of shape {tuple(w.shape)}, expected {tuple(c.shape)}")
            total = total + (w * c).sum()
        return total

    def cell_ms(self, op_weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each cell's share of E[Lat] (its edges' Σ_o w·cost; the fixed parts excluded)."""
        costs = self._costs_like(op_weights[0])
        return [(w * c).sum() for w, c in zip(op_weights, costs)]

    def predict(self, genotype: Genotype) -> float:
        """Predicted milliseconds of a derived net: `expected_ms` of its one-hot weights."""
        return float(self.expected_ms(genotype_weights(genotype)))

    def stage_op_ms(self, genotype: Genotype) -> list[float]:
        """Raw (uncalibrated) table sum of the genotype's edge ops, per stage: what the
        calibration scales."""
        out = [0.0] * len(self.stage_scale)
        for w, c, s in zip(genotype_weights(genotype), self.raw_costs, self.stages):
            out[s] += float((w.double() * c).sum())
        return out

    def breakdown(self, genotype: Genotype) -> dict[str, Any]:
        """Where the predicted milliseconds go (raw table values, then the calibrated total)."""
        return {
            "stem_ms": self.lut[self.layout.stem.key],
            "skeleton_ms": [self.lut[c.skeleton.key] for c in self.layout.cells],
            "head_ms": self.lut[self.layout.head.key],
            "stage_op_ms": self.stage_op_ms(genotype),
            "calibrated": self.calibration is not None,
            "predicted_ms": self.predict(genotype),
        }


# --------------------------------------------------------------------------- loss and λ


def latency_loss(expected_ms: torch.Tensor, lat_cfg: LatencyConfig, lam: float,
                 budget_scale: float = 1.0, target_ms: float | None = None) -> torch.Tensor:
    """The latency term added to the architecture loss (see the module docstring).
    `budget_scale` r: in `target` mode the hinge compares E[Lat] with r·T (r = E[Lat] /
    measured or predicted latency of the derived net, `latency.target_basis`); T is `target_ms`,
    else `latency.target_ms`."""
    mode = lat_cfg.loss
    target = target_ms if target_ms is not None else lat_cfg.target_ms
    if mode == "linear":
        return lam * expected_ms
    if mode == "log":
        ref = target if target else 1.0
        return lam * lat_cfg.log_beta * torch.log(expected_ms.clamp_min(1e-6) / ref)
    if mode == "target":
        if not target or target <= 0:
            raise GasnasError("config key 'latency.target_ms': a positive budget is required when latency.loss is 'target'")
        return lam * torch.relu(expected_ms / (target * budget_scale) - 1.0)
    raise GasnasError(f"config key 'latency.loss': unknown mode {mode!r} (linear, log, target)")


# --------------------------------------------------------------------------- run helpers


def get_or_build_lut(cfg: Config, run_dir: Path, num_classes: int, *, progress: bool = True,
                     calibrate_samples: int | None = None) -> LatencyTable:
    """The table a search run uses, saved as `run_dir/lut.json` (the run keeps what it used).

    `cfg.latency.lut` if set (its environment checked), else `run_dir/lut.json` if a resumed run
    already has one, else a freshly measured table. Keys this space needs are measured if
    missing (`measure_missing`), and a table without a calibration for this space/input size
    is calibrated on `calibrate_samples` measured derived nets (default 16; 0 skips) unless it
    is a foreign table.
    """

    lat = cfg.latency
    run_lut = Path(run_dir) / "lut.json"
    current = current_environment(lat)
    changed = True
    if lat.lut:
        table = LatencyTable.load(lat.lut)
        table.check_environment(current, lat.allow_foreign_lut)
    elif run_lut.is_file():
        table = LatencyTable.load(run_lut)
        table.check_environment(current, lat.allow_foreign_lut)
        changed = False
    else:
        table = build_lut(cfg.space, num_classes, lat, progress=progress)
    layout = space_layout(cfg.space, num_classes, lat.input_size)
    if ensure_entries(table, layout, lat, progress=progress):
        changed = True
    if calibrate_samples is None:
        calibrate_samples = int(getattr(lat, "calibrate_samples", DEFAULT_CALIBRATION_SAMPLES))
    foreign = any(table.env.get(k) != v for k, v in current.items() if k in ENV_FIELDS)
    scope = calibration_scope(cfg.space, num_classes, lat.input_size)
    if calibrate_samples > 0 and not foreign and calibration_for(table, scope) is None:
        calibrate(table, cfg.space, num_classes, lat, samples=calibrate_samples, progress=progress)
        changed = True
    if changed:
        table.save(run_lut)
    return table


def measure_net_ms(model: Any, lat_cfg: LatencyConfig) -> float:
    """Measured median batch-1 latency of `model` at `lat_cfg.input_size`, as `lat_cfg` times."""
    with quiet_export():
        t = measure_model(model, lat_cfg.input_size, lat_cfg.backend, lat_cfg.device, lat_cfg.dtype,
                          lat_cfg.threads, lat_cfg.warmup, lat_cfg.repeats)
    return t.median_ms


def measure_genotype_ms(genotype: Genotype, lat_cfg: LatencyConfig) -> float:
    """Measured median batch-1 latency of the derived net at `lat_cfg.input_size`."""
    return measure_net_ms(DerivedNet(genotype), lat_cfg)
