"""Small-sample statistics for comparing a few searched nets with a few random ones (numpy only).

`bootstrap_ci`: percentile bootstrap CI of mean(a) − mean(b), each group resampled with
replacement on its own. `permutation_p`: one-sided permutation test of H1 mean(a) > mean(b),
exact over every split of the pooled values when there are at most `EXACT_MAX_SPLITS` of them,
else Monte Carlo with the +1 correction ((1 + hits) / (1 + draws), never 0). `smallest_p`: the
least p the test can give for those group sizes (one split in all, or none drawn), so a report can say when
a comparison's p is at its floor: with 3 nets against 2 no outcome reaches 0.05. `percentile_of`:
where x falls in a population (ties count half). `mean_std`: mean and sample std (ddof 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

EXACT_MAX_SPLITS = 20_000


def _array(xs: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(list(xs), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty list of numbers")
    return arr


def bootstrap_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean(a) − mean(b), lower, upper) of the (1 − alpha) percentile bootstrap interval."""
    x, y = _array(a, "a"), _array(b, "b")
    rng = np.random.default_rng(seed)
    boot_x = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    boot_y = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    lo, hi = np.quantile(boot_x - boot_y, [alpha / 2, 1 - alpha / 2])
    return float(x.mean() - y.mean()), float(lo), float(hi)


def permutation_p(a: Sequence[float], b: Sequence[float], n_perm: int = 20_000, seed: int = 0) -> float:
    """One-sided p-value of H1: mean(a) > mean(b) (share of splits at least as extreme)."""
    x, y = _array(a, "a"), _array(b, "b")
    pooled = np.concatenate([x, y])
    n, k = pooled.size, x.size
    observed = x.sum()  # the groups' sizes are fixed, so sum(a) orders splits like mean(a) − mean(b)
    eps = 1e-9 * max(1.0, float(np.abs(pooled).sum()))
    if _is_exact(n, k):
        idx = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)
        sums = pooled[idx].sum(axis=1)
        return float((sums >= observed - eps).mean())
    rng = np.random.default_rng(seed)
    sums = np.array([pooled[rng.permutation(n)[:k]].sum() for _ in range(n_perm)])
    return float((1 + (sums >= observed - eps).sum()) / (1 + n_perm))


def _is_exact(n: int, k: int) -> bool:
    """Whether `permutation_p` enumerates every split of n pooled values into k and n − k."""
    return math.comb(n, k) <= EXACT_MAX_SPLITS


def smallest_p(n_a: int, n_b: int, n_perm: int = 20_000) -> float:
    """The least one-sided p `permutation_p` (with the same `n_perm`) can return for groups of
    n_a and n_b values: exact, one split of C(n_a + n_b, n_a), the observed one, at least as
    extreme; Monte Carlo, no drawn split at least as extreme, 1 / (1 + n_perm)."""
    if n_a < 1 or n_b < 1:
        raise ValueError(f"group sizes: expected at least 1 each, got {n_a} and {n_b}")
    if _is_exact(n_a + n_b, n_a):
        return 1.0 / math.comb(n_a + n_b, n_a)
    return 1.0 / (1 + n_perm)


def percentile_of(x: float, population: Sequence[float]) -> float:
    """Percent of `population` strictly below x, plus half of those equal to it."""
    pop = _array(population, "population")
    return float(100.0 * ((pop < x).sum() + 0.5 * (pop == x).sum()) / pop.size)


def mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1); std None for fewer than 2 values, both None for none."""
    arr = np.asarray(list(xs), dtype=np.float64)
    if arr.size == 0:
        return None, None
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size >= 2 else None)
