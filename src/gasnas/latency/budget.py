"""The λ / budget policy of a search: one object, asked once per architecture step and once per
epoch end (engine/search.py, engine/architect.py).

Per step (`loss`, then `after_step`):
- **warm-in and ramp**: λ_eff = λ · ramp, ramp = 0 for `search.latency_warmin_epochs` search
  epochs after the warm-up (CE alone shapes α first), then rising linearly to 1 over
  `search.latency_ramp_epochs` epochs (per step, not per epoch);
- **per-stage balance** (`search.balance_latency`): the latency term's *gradient* in the cells of
  stage s is scaled by b_s = (RMS CE gradient on stage s's op weights) / (its mean over cells),
  an EMA over steps. Its value is unchanged. Why: the latency gradient per op weight is about
  the same in every cell while the CE gradient shrinks 8–20× from the first stage to the last,
  so unbalanced the deepest cells flip to the cheap ops first;
- **the budget, every step** (`latency.loss: target`): d = the derived net's LUT prediction of
  this step's α' × the calibration c (measured / predicted at the last epoch end, 1 before any
  measurement); the hinge compares E[Lat] with T·E[Lat]/d, i.e. it is active exactly when d > T;
  and λ ← λ·exp(`latency.lambda_lr`·clip(d/T − 1, −1, 1)) once the ramp is on (a smooth dual
  ascent, instead of doubling or halving λ once per epoch from one measurement).

Per epoch (`end_epoch`): the derived net's measured latency updates the calibration c, the
median of measured / predicted over the last `search.calibration_window` distinct derived nets
(a net derived again replaces its older entry: during warm-up the same net comes back every
epoch, and its one timing must not fill the window). Why a median: one measurement's c moves
3-7% from epoch to epoch on a shared CPU (0.75-1.01 within a CamVid search's last 10 epochs)
while the nets barely change, and every move of c moves the limit T / c that `fit_to_budget`
fits to, so a one-epoch c swapped 0-47 ops an epoch at the end.

At derivation (`fit_to_budget`, `search.derive_within_budget`): the argmax net of α' is what the
budget above steers; the net a search *ships* must also meet the budget when α' has settled
before λ won (the latency gradient through a saturated softmax vanishes). So the epoch's
genotype is the argmax net with the fewest, least-preferred op swaps that bring its calibrated
prediction within T; α' still ranks every choice, and the metrics log how far its argmax was.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import Any

import torch

from gasnas.latency.estimator import latency_loss
from gasnas.space.cell import edge_index
from gasnas.space.genotype import SKIP_OP, CellGene, Genotype
from gasnas.space.ops import OPS

STAGE_EMA = 0.9        # weight of the running per-stage CE gradient RMS against a new step's
LAMBDA_RANGE = 1e3     # λ stays within [λ0 / this, λ0 · this]


class LatencyBudget:
    def __init__(self, lat_cfg: Any, search_cfg: Any, estimator: Any) -> None:
        self.lat_cfg, self.search_cfg, self.estimator = lat_cfg, search_cfg, estimator
        self.lam0 = float(lat_cfg.target_weight if lat_cfg.loss == "target" else lat_cfg.weight)
        self.lam = self.lam0
        # T in ms: latency.target_ms, or under latency.target_ratio set by the search from the
        # peer's timing (`set_target`)
        self.target_ms: float | None = lat_cfg.target_ms
        # (net, measured / predicted) of the last distinct derived nets, oldest first: `calibration`
        self.calibrations: list[tuple[str, float]] = []
        self.budget_scale = 1.0  # r = E[Lat] / d, refreshed every step
        self.derived_ms: float | None = None
        self.stage_grad: list[float] | None = None  # EMA of the CE gradient RMS per stage
        self.stages = list(estimator.stages)

    # ------------------------------------------------------------------ schedule

    def ramp(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """0 during the warm-up and the warm-in epochs, then linear to 1 over the ramp epochs."""
        sc = self.search_cfg
        into = epoch - sc.warmup_epochs - sc.latency_warmin_epochs + step / max(1, steps_per_epoch)
        if epoch < sc.warmup_epochs + sc.latency_warmin_epochs:
            return 0.0
        if sc.latency_ramp_epochs <= 0:
            return 1.0
        return float(min(1.0, (into + 1 / max(1, steps_per_epoch)) / sc.latency_ramp_epochs))

    def lam_eff(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        return self.lam * self.ramp(epoch, step, steps_per_epoch)

    # ------------------------------------------------------------------ the loss

    def cell_balance(self) -> list[float] | None:
        """b per cell (mean 1 over cells), or None when balance is off or not yet measured."""
        if not self.search_cfg.balance_latency or self.stage_grad is None:
            return None
        per_cell = [self.stage_grad[s] for s in self.stages]
        mean = sum(per_cell) / len(per_cell)
        if not mean > 0:
            return None
        return [g / mean for g in per_cell]

    def loss(self, latency_weights: list[torch.Tensor], epoch: int, step: int, steps_per_epoch: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(latency term, E[Lat]) for one architecture step."""
        expected = self.estimator.expected_ms(latency_weights)
        balance = self.cell_balance()
        shaped = expected
        if balance is not None:
            parts = self.estimator.cell_ms(latency_weights)
            steered = sum(b * p for b, p in zip(balance, parts))
            shaped = expected.detach() + steered - steered.detach()  # value E, gradient balanced
        lam = self.lam_eff(epoch, step, steps_per_epoch)
        return latency_loss(shaped, self.lat_cfg, lam, self.budget_scale, self.target_ms), expected

    def record_ce_gradients(self, grads: list[torch.Tensor | None]) -> None:
        """Fold one step's CE gradients on each cell's op weights into the per-stage EMA."""
        n = max(self.stages) + 1 if self.stages else 0
        sums, counts = [0.0] * n, [0] * n
        for s, g in zip(self.stages, grads):
            if g is not None:
                sums[s] += float(g.detach().double().pow(2).mean())
                counts[s] += 1
        rms = [math.sqrt(sums[s] / counts[s]) if counts[s] else 0.0 for s in range(n)]
        if self.stage_grad is None:
            self.stage_grad = rms
        else:
            self.stage_grad = [STAGE_EMA * old + (1 - STAGE_EMA) * new for old, new in zip(self.stage_grad, rms)]

    # ------------------------------------------------------------------ the budget

    @property
    def targeted(self) -> bool:
        return self.lat_cfg.loss == "target" and bool(self.target_ms)

    def set_target(self, target_ms: float) -> None:
        """The budget T in ms (`latency.target_ratio` × the peer's latency on the search's scale)."""
        self.target_ms = float(target_ms)

    def after_step(self, expected_ms: float, predicted_ms: float, ramp: float) -> None:
        """The budget for the next step, from this step's α': the derived net's calibrated
        prediction d, the hinge's scale r = E[Lat]/d, and (once the ramp is on) λ."""
        self.derived_ms = predicted_ms * self.calibration
        if not self.targeted:
            return
        if self.lat_cfg.target_basis != "expected" and self.derived_ms > 0 and expected_ms > 0:
            self.budget_scale = float(expected_ms / self.derived_ms)
        if ramp > 0:
            excess = min(1.0, max(-1.0, self.derived_ms / float(self.target_ms) - 1.0))
            lam = self.lam * math.exp(float(self.lat_cfg.lambda_lr) * excess)
            self.lam = float(min(self.lam0 * LAMBDA_RANGE, max(self.lam0 / LAMBDA_RANGE, lam)))

    @property
    def calibration(self) -> float:
        """Measured / LUT-predicted latency of the derived net: the window's median (1 before
        any measurement)."""
        return float(statistics.median(c for _, c in self.calibrations)) if self.calibrations else 1.0

    def predicted_limit_ms(self) -> float:
        """The budget on the LUT's scale: T over the calibration (measured / predicted)."""
        return float(self.target_ms) / self.calibration

    def end_epoch(self, predicted_ms: float, measured_ms: float | None, net: str = "") -> None:
        """A measurement of the derived net `net` (its signature) recalibrates d (basis
        `measured`)."""
        if (self.lat_cfg.target_basis == "measured" and measured_ms is not None and measured_ms > 0
                and predicted_ms > 0):
            window = max(1, int(self.search_cfg.calibration_window))
            kept = [(k, c) for k, c in self.calibrations if not net or k != net]
            self.calibrations = [*kept, (net, float(measured_ms / predicted_ms))][-window:]

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, "target_ms": self.target_ms, "calibration": self.calibration,
                "calibrations": [[k, c] for k, c in self.calibrations], "budget_scale": self.budget_scale,
                "derived_ms": self.derived_ms, "stage_grad": self.stage_grad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state.get("lambda", self.lam0))
        self.target_ms = state.get("target_ms", self.target_ms)
        # a checkpoint from before the window: its one calibration starts the window
        history = state.get("calibrations", [["", state["calibration"]]] if "calibration" in state else [])
        self.calibrations = [(str(k), float(c)) for k, c in history]
        self.budget_scale = float(state.get("budget_scale", 1.0))
        self.derived_ms = state.get("derived_ms")
        grads = state.get("stage_grad")
        self.stage_grad = [float(g) for g in grads] if grads is not None else None


def fit_to_budget(genotype: Genotype, op_weights: list[torch.Tensor], estimator: Any, limit_ms: float,
                  max_skip: int | None = None) -> tuple[Genotype, int]:
    """The argmax genotype with kept edges' ops swapped to cheaper ones until its predicted
    latency is at most `limit_ms`: greedily, each time the swap that gives up the least
    log-probability per millisecond saved (log w_current − log w_new over cost_current −
    cost_new, w = softmax(α') of that edge). The kept edges stay; `none` is never chosen and
    `skip_connect` only while the cell has fewer than `max_skip` skips. Returns the genotype
    (the input itself when it already fits) and the number of swaps; stops when no swap is
    left (the cheapest derivable net), even above the limit."""
    ops = genotype.space.ops
    edges = edge_index(genotype.space.nodes)
    usable = [not OPS[o].free for o in ops]
    cells = [[list(e) for e in cell.edges] for cell in genotype.cells]
    costs = [c.double().cpu() for c in estimator.costs]
    logw = [w.detach().double().cpu().clamp_min(1e-30).log() for w in op_weights]
    total = estimator.predict(genotype)
    swaps = 0
    while total > limit_ms:
        best: tuple[float, int, int, int, float] | None = None  # (price, cell, kept index, op, saved)
        for k, kept in enumerate(cells):
            skips = sum(1 for _, _, o in kept if o == SKIP_OP)
            for i, (src, dst, op) in enumerate(kept):
                e, cur = edges.index((src, dst)), ops.index(op)
                for o, name in enumerate(ops):
                    if not usable[o] or o == cur:
                        continue
                    if name == SKIP_OP and max_skip is not None and skips >= max_skip:
                        continue
                    saved = float(costs[k][e, cur] - costs[k][e, o])
                    if saved <= 1e-9:
                        continue
                    price = max(0.0, float(logw[k][e, cur] - logw[k][e, o])) / saved
                    if best is None or (price, k, i, o) < best[:4]:
                        best = (price, k, i, o, saved)
        if best is None:
            break
        _, k, i, o, saved = best
        cells[k][i][2] = ops[o]
        total -= saved
        swaps += 1
    if not swaps:
        return genotype, 0
    fitted = replace(genotype, cells=[CellGene(c.reduction, [(int(s), int(d), str(o)) for s, d, o in kept])
                                      for c, kept in zip(genotype.cells, cells)],
                     provenance=dict(genotype.provenance))
    fitted.predicted_latency_ms = estimator.predict(fitted)
    return fitted, swaps
