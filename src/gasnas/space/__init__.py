"""Search space: the op registry, cells, the supernet, genotypes and the derived network."""

from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import CellGene, Genotype, derive_genotype, genotype_weights
from gasnas.space.ops import OPS, build_op, register_op
from gasnas.space.supernet import Supernet

__all__ = ["OPS", "CellGene", "DerivedNet", "Genotype", "Supernet", "build_op",
           "derive_genotype", "genotype_weights", "register_op"]
