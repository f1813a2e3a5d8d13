"""The derived network: the supernet's skeleton with only the genotype's edges and ops."""

from __future__ import annotations

from gasnas.space.cell import DerivedCell
from gasnas.space.genotype import Genotype
from gasnas.space.network import SegmentationNet


class DerivedNet(SegmentationNet):
    def __init__(self, genotype: Genotype, num_classes: int | None = None) -> None:
        space = genotype.space
        cells = genotype.cells
        super().__init__(space, num_classes or genotype.num_classes, lambda p: DerivedCell(
            cells[p.index].edges, p.c_prev_prev, p.c_prev, p.c, space.nodes, p.reduction,
            p.reduction_prev))
        self.genotype = genotype
