"""Latency: the lookup table (measure, lut), the differentiable estimate and its loss
(estimator), the whole-network correction (calibrate) and its check (validate).

Where latency enters the search loss: `LatencyEstimator.expected_ms` → `latency_loss`.
"""

from gasnas.latency.estimator import (
    LatencyEstimator,
    get_or_build_lut,
    latency_loss,
    measure_genotype_ms,
)
from gasnas.latency.lut import LatencyTable
from gasnas.latency.measure import build_lut

__all__ = [
    "LatencyTable",
    "LatencyEstimator",
    "latency_loss",
    "get_or_build_lut",
    "measure_genotype_ms",
    "build_lut",
]
