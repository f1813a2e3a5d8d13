"""Random genotypes at a matched predicted latency: the baseline a search has to beat.

A search is only worth its cost if its nets beat random nets of the same latency. `sample_matched`
draws genotypes with derivation's structure (per intermediate node 2 distinct incoming edges, each
with one of the space's non-free ops, and at most `max_skip` kept `skip_connect` edges per cell,
derivation's `search.max_skip_per_cell`) uniformly at random among those whose predicted latency
`estimator.predict(g)` lies in [T·(1 − tol), T·(1 + tol)]: rejection sampling, never "the closest".

Uniform draws rarely land in a narrow window away from the space's mean latency (each cell averages
over many ops), so draw i proposes from a tilted law q_θ(g) ∝ exp(−θ·x(g))·[skips per cell ≤ cap],
x(g) = predicted − constant ms = the sum of the kept edges' (calibrated) table costs. θ > 0 favours
cheap ops, θ < 0 costly ones (θ = 0: uniform over capped genotypes). q_θ is sampled exactly, cell
by cell: the skip cap couples a cell's nodes only through its skip count, so a forward pass over the
nodes sums the weights per skip count and a backward pass draws each node's (edge pair, which kept
edges skip) given the count left, then each non-skip edge's op ∝ exp(−θ·cost). A draw in the window
is accepted with probability exp(θ·x − max over the window of θ·x), the ratio of the uniform law
to q_θ up to a constant, so every accepted genotype is uniform over the window whatever θ was;
θ only decides how often draws land there. θ_i = θ* + jitter, θ* solving E_θ[x] = T − constant
(exact, by bisection). Acceptance is the window alone; provenance records each draw's θ (1/ms).

The same passes with max in place of the soft sum give the exact extremes of x (the window check)
and `cheapest_genotype`, the least predicted latency a derivable net can have.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from gasnas.errors import GasnasError
from gasnas.latency.sampling import genotype_signature  # gasnas.latency imports gasnas.space
from gasnas.space.cell import edge_index
from gasnas.space.genotype import SKIP_OP, CellGene, Genotype
from gasnas.space.network import plan_cells
from gasnas.space.ops import OPS

DEFAULT_MAX_DRAWS = 100_000
_BRACKET = 64.0  # |θ*| at most this many per typical op-cost spread (ms)


def _reduce(scores: np.ndarray, means: np.ndarray, soft: bool) -> tuple[np.ndarray, np.ndarray]:
    """Over the last axis: (log Σ exp(score), the exp(score)-weighted mean) if `soft`, else
    (max score, the mean at the max). All −inf gives −inf and mean 0."""
    top = scores.max(axis=-1)
    finite = np.isfinite(top)
    if not soft:
        at = np.take_along_axis(means, scores.argmax(axis=-1)[..., None], axis=-1)[..., 0]
        return top, np.where(finite, at, 0.0)
    w = np.exp(scores - np.where(finite, top, 0.0)[..., None])
    z = w.sum(axis=-1)
    safe = np.where(z > 0, z, 1.0)
    return np.where(z > 0, np.where(finite, top, 0.0) + np.log(safe), -np.inf), (w * means).sum(axis=-1) / safe


class _Tilted:
    """The estimator's per-edge costs as arrays, and the skip-capped tilted law over genotypes."""

    def __init__(self, estimator: Any, max_skip: int | None = None) -> None:
        space = estimator.space
        self.space, self.num_classes = space, estimator.num_classes
        self.usable = [i for i, op in enumerate(space.ops) if not OPS[op].free]
        if not self.usable:
            raise GasnasError("space.ops: no op with a cost (every op is free); nothing to sample")
        names = [space.ops[i] for i in self.usable]
        self.skip = names.index(SKIP_OP) if SKIP_OP in names else None
        self.plain = [i for i in range(len(names)) if i != self.skip]  # indexes into usable
        self.edges = edge_index(space.nodes)
        self.plans = plan_cells(space)
        self.costs = np.stack([np.asarray(c.detach().double().cpu().numpy())[:, self.usable]
                               for c in estimator.costs])  # [cells, edges, usable ops]
        self.constant = float(estimator.constant_ms)
        # cap = the most kept skips a cell may hold; 2 per node is no cap
        self.cap = 2 * space.nodes if max_skip is None or self.skip is None else min(max_skip, 2 * space.nodes)
        if not self.plain and self.cap < 2 * space.nodes:
            raise GasnasError(f"search.max_skip_per_cell: {max_skip} leaves no op for the other kept edges "
                              "(skip_connect is the only op with a cost)")
        if not self.plain:  # skip is the only op with a cost
            bits = [(1, 1)]
        elif self.skip is None:
            bits = [(0, 0)]
        else:
            bits = [(0, 0), (1, 0), (0, 1), (1, 1)]
        # per node its alternatives: (edge a, edge b, a skips?, b skips?), a < b incoming edges
        self.alts = [np.array([(a, b, sa, sb) for a, b in itertools.combinations(
            [e for e, (_, dst) in enumerate(self.edges) if dst == j], 2) for sa, sb in bits])
            for j in range(space.nodes)]
        spread = np.median(self.costs.std(axis=-1))
        self.scale = float(spread) if spread > 0 else 0.0  # ms; 0: every op costs the same

    def _passes(self, logits: np.ndarray, soft: bool) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Forward pass: per node j the table F_j[cell, k] (log-weight, or best score, of nodes
        < j with k skips; F_0 = [0, −inf, ...]) and its mean cost M_j, plus each node's
        alternatives' scores [cell, alternative]. Returns (F tables, alternative scores, M_last)."""
        n_cells, n_edges, _ = logits.shape
        e_score = np.full((n_cells, n_edges, 2), -np.inf)
        e_mean = np.zeros((n_cells, n_edges, 2))
        if self.plain:
            e_score[..., 0], e_mean[..., 0] = _reduce(logits[..., self.plain], self.costs[..., self.plain], soft)
        if self.skip is not None:
            e_score[..., 1], e_mean[..., 1] = logits[..., self.skip], self.costs[..., self.skip]
        table = np.full((n_cells, self.cap + 1), -np.inf)
        table[:, 0] = 0.0
        mean = np.zeros_like(table)
        tables, alt_scores = [table], []
        ks = np.arange(self.cap + 1)
        for alts in self.alts:
            a, b, sa, sb = alts.T
            s = e_score[:, a, sa] + e_score[:, b, sb]  # [cells, A]
            m = e_mean[:, a, sa] + e_mean[:, b, sb]
            prev = ks[:, None] - (sa + sb)[None, :]  # [K, A]: skips before this node
            ok = prev >= 0
            cand = np.where(ok, tables[-1][:, np.clip(prev, 0, None)] + s[:, None, :], -np.inf)
            cand_m = np.where(ok, mean[:, np.clip(prev, 0, None)] + m[:, None, :], 0.0)
            table, mean = _reduce(cand, cand_m, soft)
            tables.append(table)
            alt_scores.append(s)
        return tables, alt_scores, mean

    def x_range(self) -> tuple[float, float]:
        """Smallest and largest possible x (kept-edge ms) over all capped genotypes (exact)."""
        lo = -self._passes(-self.costs, soft=False)[0][-1].max(axis=1).sum()
        hi = self._passes(self.costs, soft=False)[0][-1].max(axis=1).sum()
        return float(lo), float(hi)

    def mean_x(self, theta: float) -> float:
        """E_θ[x] under the proposal (exact)."""
        tables, _, mean = self._passes(-theta * self.costs, soft=True)
        return float(_reduce(tables[-1], mean, soft=True)[1].sum())

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

    def pick(self, logits: np.ndarray, soft: bool, rng: np.random.Generator | None) -> tuple[list[CellGene], float]:
        """Backward pass: one genotype, drawn from the law ∝ exp(Σ kept-edge logits) (Gumbel-max
        at every step, `rng`) or its most likely one (`rng` None), and its x (kept-edge ms)."""
        tables, alt_scores, _ = self._passes(logits, soft)
        n_cells = logits.shape[0]
        rows = np.arange(n_cells)

        def noisy(v: np.ndarray) -> np.ndarray:
            return v if rng is None else v + rng.gumbel(size=v.shape)

        k = noisy(tables[-1]).argmax(axis=1)  # skips in the cell
        chosen: list[np.ndarray] = [np.empty(0)] * len(self.alts)
        for j in reversed(range(len(self.alts))):
            alts = self.alts[j]
            prev = k[:, None] - (alts[:, 2] + alts[:, 3])[None, :]
            score = np.where(prev >= 0, tables[j][rows[:, None], np.clip(prev, 0, None)] + alt_scores[j], -np.inf)
            pick = noisy(score).argmax(axis=1)
            chosen[j] = alts[pick]  # [cells, 4]
            k = prev[rows, pick]
        plain_op = np.asarray(self.plain)[noisy(logits[..., self.plain]).argmax(axis=-1)] if self.plain else None
        cells, x = [], 0.0
        for c, plan in enumerate(self.plans):
            edges = []
            for node in chosen:
                a, b, sa, sb = (int(v) for v in node[c])
                for e, skips in ((a, sa), (b, sb)):
                    o = self.skip if skips else int(plain_op[c, e])
                    x += float(self.costs[c, e, o])
                    edges.append((self.edges[e][0], self.edges[e][1], self.space.ops[self.usable[o]]))
            cells.append(CellGene(plan.reduction, edges))
        return cells, x

    def draw(self, theta: float, rng: np.random.Generator) -> tuple[list[CellGene], float]:
        """One genotype from q_θ and its x."""
        return self.pick(-theta * self.costs, soft=True, rng=rng)


def sample_matched(estimator: Any, n: int, target_ms: float, tolerance: float = 0.03, seed: int = 0,
                   max_draws: int = DEFAULT_MAX_DRAWS, max_skip: int | None = None) -> list[Genotype]:
    """`n` distinct genotypes of `estimator.space` drawn uniformly among those with at most
    `max_skip` kept skips per cell whose predicted latency lies within ±`tolerance` (relative) of
    `target_ms` (see the module doc). Deterministic from `seed`; a one-line GasnasError naming the
    window when fewer than `n` are found."""

    lo_ms, hi_ms = target_ms * (1.0 - tolerance), target_ms * (1.0 + tolerance)
    window = f"{lo_ms:.3f}-{hi_ms:.3f} ms (target {target_ms:g} ms ±{100 * tolerance:g}%)"
    tilt = _Tilted(estimator, max_skip)
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
                "tolerance": tolerance, "max_skip_per_cell": max_skip, "bias": round(theta, 6), "draw": draw}
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


def cheapest_genotype(estimator: Any, max_skip: int | None = None) -> Genotype:
    """The anchor net: the derivable genotype (at most `max_skip` kept skips per cell) of least
    predicted latency by the estimator's table costs (exact: the max pass on −cost)."""
    tilt = _Tilted(estimator, max_skip)
    cells, _ = tilt.pick(-tilt.costs, soft=False, rng=None)
    g = Genotype(tilt.space, tilt.num_classes, cells, provenance={"sampler": "cheapest", "max_skip_per_cell": max_skip})
    g.predicted_latency_ms = float(estimator.predict(g))
    return g
