"""The latency a table predicts for a discrete genotype, summed by hand from its keys: what
`LatencyEstimator.expected_ms` must equal for one-hot weights."""

from __future__ import annotations


def one_hot_sum_by_hand(layout, table, genotype) -> float:
    """Fixed parts (stem, preprocessing, head) plus the op each kept edge chose."""
    total = sum(table[it.key] for it in layout.fixed_items())
    for cl, cell in zip(layout.cells, genotype.cells):
        for src, dst, op in cell.edges:
            edge = next(e for e in cl.edges if (e.src, e.node) == (src, dst))
            total += table[edge.item(op).key]
    return total
