"""The latency a table predicts for a discrete genotype, summed by hand from its keys: what
`LatencyEstimator.expected_ms` must equal for one-hot weights."""

from __future__ import annotations

import pytest


def assert_one_hot_sum_holds(space, classes: int, size: list[int]) -> None:
    """Build a table for `space` at `size`; E[Lat] of a derived genotype's one-hot weights must be
    the fixed parts (stem, preprocessing, head) plus the op each kept edge chose."""
    from gasnas.config import LatencyConfig
    from gasnas.latency import LatencyEstimator, build_lut
    from gasnas.latency.keys import space_layout
    from gasnas.space.genotype import derive_genotype, genotype_weights
    from gasnas.space.supernet import Supernet

    lat = LatencyConfig(input_size=size, threads=1, warmup=0, repeats=1)
    table = build_lut(space, classes, lat, progress=False, rounds=1)
    est = LatencyEstimator(space, classes, table, size, lat, calibrated=False)
    layout = space_layout(space, classes, size)
    genotype = derive_genotype(Supernet(space, classes))
    total = sum(table[it.key] for it in layout.fixed_items())
    for cl, cell in zip(layout.cells, genotype.cells):
        for src, dst, op in cell.edges:
            edge = next(e for e in cl.edges if (e.src, e.node) == (src, dst))
            total += table[edge.item(op).key]
    assert float(est.expected_ms(genotype_weights(genotype))) == pytest.approx(total, rel=1e-5)
