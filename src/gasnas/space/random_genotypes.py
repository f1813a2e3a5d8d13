"""Random genotypes at a matched predicted latency: the baseline a search has to beat.

A search is only worth its cost if its nets beat random nets of the same latency. `sample_matched`
draws genotypes with derivation's structure (per intermediate node 2 distinct incoming edges, each
with one of the space's non-free ops) uniformly at random among those whose predicted latency
`estimator.predict(g)` lies in [T·(1 − tol), T·(1 + tol)]: rejection sampling, never "the closest".

Uniform draws rarely land in a narrow window away from the space's mean latency (each cell averages
over many ops), so draw i proposes from a tilted law q_θ(g) ∝ exp(−θ·x(g)), x(g) = predicted −
constant ms = the sum of the kept edges' (calibrated) table costs: op o on edge e with probability
∝ exp(−θ·c_eo), the pair {a, b} of a node with probability ∝ Z_a·Z_b (Z_e = Σ_o exp(−θ·c_eo)).
θ > 0 favours cheap ops, θ < 0 costly ones (θ = 0: uniform edges and ops). A draw in the window
is accepted with probability exp(θ·x − max over the window of θ·x), the ratio of the uniform law
to q_θ up to a constant, so every accepted genotype is uniform over the window whatever θ was;
θ only decides how often draws land there. θ_i = θ* + jitter, θ* solving E_θ[x] = T − constant
(exact, by bisection). Acceptance is the window alone; provenance records each draw's θ (1/ms).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from gasnas.errors import GasnasError
from gasnas.latency.sampling import genotype_signature  # gasnas.latency imports gasnas.space
from gasnas.space.cell import edge_index
from gasnas.space.genotype import CellGene, Genotype, derive_cell
from gasnas.space.network import plan_cells
from gasnas.space.ops import OPS

DEFAULT_MAX_DRAWS = 100_000
_BRACKET = 64.0  # |θ*| at most this many per typical op-cost spread (ms)


class _Tilted:
    """The estimator's per-edge costs as arrays, and the tilted proposal over genotypes."""

    def __init__(self, estimator: Any) -> None:
        space = estimator.space
        self.space, self.num_classes = space, estimator.num_classes
        self.usable = [i for i, op in enumerate(space.ops) if not OPS[op].free]
        if not self.usable:
            raise GasnasError("space.ops: no op with a cost (every op is free); nothing to sample")
        self.edges = edge_index(space.nodes)
        self.plans = plan_cells(space)
        self.costs = np.stack([np.asarray(c.detach().double().cpu().numpy())[:, self.usable]
                               for c in estimator.costs])  # [cells, edges, usable ops]
        self.constant = float(estimator.constant_ms)
        self.pairs = [np.array(list(itertools.combinations(
            [e for e, (_, dst) in enumerate(self.edges) if dst == j], 2))) for j in range(space.nodes)]
        spread = np.median(self.costs.std(axis=-1))
        self.scale = float(spread) if spread > 0 else 0.0  # ms; 0: every op costs the same

    def _log_z(self, theta: float) -> tuple[np.ndarray, np.ndarray]:
        logits = -theta * self.costs
        top = logits.max(axis=-1, keepdims=True)
        return (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0], logits

    def x_range(self) -> tuple[float, float]:
        """Smallest and largest possible x (kept-edge ms) over all genotypes."""
        lo = hi = 0.0
        cheap, dear = self.costs.min(axis=-1), self.costs.max(axis=-1)
        for pr in self.pairs:
            lo += float((cheap[:, pr[:, 0]] + cheap[:, pr[:, 1]]).min(axis=1).sum())
            hi += float((dear[:, pr[:, 0]] + dear[:, pr[:, 1]]).max(axis=1).sum())
        return lo, hi

    def mean_x(self, theta: float) -> float:
        """E_θ[x] under the proposal (exact)."""
        log_z, logits = self._log_z(theta)
        mu = (np.exp(logits - log_z[..., None]) * self.costs).sum(axis=-1)  # [cells, edges]
        total = 0.0
        for pr in self.pairs:
            s = log_z[:, pr[:, 0]] + log_z[:, pr[:, 1]]
            w = np.exp(s - s.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            total += float((w * (mu[:, pr[:, 0]] + mu[:, pr[:, 1]])).sum())
        return total

    def solve_theta(self, x_target: float) -> tuple[float, float]:
        """(θ*, jitter half-width d) for proposals centred on `x_target`, d ≈ window / Var."""
        if self.scale == 0.0:
            return 0.0, 0.0
        b = _BRACKET / self.scale
        if x_target >= self.mean_x(-b):
            theta = -b
        elif x_target <= self.mean_x(b):
            theta = b
        else:
            lo, hi = -b, b  # mean_x decreases in θ
            for _ in range(100):
                mid = 0.5 * (lo + hi)
                if self.mean_x(mid) > x_target:
                    lo = mid
                else:
                    hi = mid
            theta = 0.5 * (lo + hi)
        return theta, 1.0 / self.scale

    def draw(self, theta: float, rng: np.random.Generator) -> tuple[list[CellGene], float]:
        """One genotype from q_θ and its x (kept-edge ms by these arrays)."""
        log_z, logits = self._log_z(theta)
        ops = np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)  # Gumbel-max: p ∝ exp(logit)
        n_cells = self.costs.shape[0]
        kept = []
        for pr in self.pairs:
            s = log_z[:, pr[:, 0]] + log_z[:, pr[:, 1]] + rng.gumbel(size=(n_cells, len(pr)))
            kept.append(pr[np.argmax(s, axis=1)])  # [cells, 2]: pair ∝ Z_a·Z_b
        cells, x = [], 0.0
        for k, plan in enumerate(self.plans):
            chosen = []
            for node_pairs in kept:
                for e in sorted(int(v) for v in node_pairs[k]):
                    o = int(ops[k, e])
                    x += float(self.costs[k, e, o])
                    chosen.append((self.edges[e][0], self.edges[e][1], self.space.ops[self.usable[o]]))
            cells.append(CellGene(plan.reduction, chosen))
        return cells, x


def sample_matched(estimator: Any, n: int, target_ms: float, tolerance: float = 0.03, seed: int = 0,
                   max_draws: int = DEFAULT_MAX_DRAWS) -> list[Genotype]:
    """`n` distinct genotypes of `estimator.space` drawn uniformly among those whose predicted
    latency lies within ±`tolerance` (relative) of `target_ms` (see the module doc). Deterministic
    from `seed`; a one-line GasnasError naming the window when fewer than `n` are found."""

    lo_ms, hi_ms = target_ms * (1.0 - tolerance), target_ms * (1.0 + tolerance)
    window = f"{lo_ms:.3f}-{hi_ms:.3f} ms (target {target_ms:g} ms ±{100 * tolerance:g}%)"
    tilt = _Tilted(estimator)
    x_min, x_max = tilt.x_range()
    if hi_ms < tilt.constant + x_min - 1e-9 or lo_ms > tilt.constant + x_max + 1e-9:
        raise GasnasError(f"random_matched: no genotype of this space is predicted in {window}: predicted "
                          f"latencies span {tilt.constant + x_min:.3f}-{tilt.constant + x_max:.3f} ms")
    x_lo, x_hi = lo_ms - tilt.constant, hi_ms - tilt.constant
    theta0, jitter = tilt.solve_theta(target_ms - tilt.constant)
    slack = 1e-5 * max(abs(hi_ms), 1.0)  # the arrays' float64 sum vs predict's float32 one
    rng = np.random.default_rng(seed)
    out: list[Genotype] = []
    seen: set[str] = set()
    for draw in range(max_draws):
        if len(out) == n:
            break
        theta = theta0 + jitter * (2.0 * rng.random() - 1.0)
        cells, x = tilt.draw(theta, rng)
        u = rng.random()
        if not x_lo - slack <= x <= x_hi + slack:
            continue
        prov = {"sampler": "random_matched", "seed": seed, "index": len(out), "target_ms": target_ms,
                "tolerance": tolerance, "bias": round(theta, 6), "draw": draw}
        g = Genotype(tilt.space, tilt.num_classes, cells, provenance=prov)
        pred = float(estimator.predict(g))
        if not lo_ms <= pred <= hi_ms:
            continue
        x = pred - tilt.constant
        log_accept = theta * (x - x_hi) if theta > 0 else theta * (x - x_lo)
        if u >= math.exp(min(0.0, log_accept)):
            continue
        sig = genotype_signature(g)
        if sig in seen:
            continue
        seen.add(sig)
        g.predicted_latency_ms = pred
        out.append(g)
    if len(out) < n:
        raise GasnasError(f"random_matched: only {len(out)} of {n} distinct genotypes found in {window} "
                          f"after {max_draws} draws; widen the tolerance or raise max_draws")
    return out


def cheapest_genotype(estimator: Any) -> Genotype:
    """The anchor net: per node the 2 incoming edges whose cheapest non-free op costs least, each
    with that op, by the estimator's table costs: the least predicted latency of the space."""
    space = estimator.space
    cells = [CellGene(plan.reduction, derive_cell(-c.detach().double().cpu(), space.ops, space.nodes))
             for plan, c in zip(plan_cells(space), estimator.costs)]
    g = Genotype(space, estimator.num_classes, cells, provenance={"sampler": "cheapest"})
    g.predicted_latency_ms = float(estimator.predict(g))
    return g
