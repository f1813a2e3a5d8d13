"""The supernet: independent α per cell (no sharing), passed through the GGM before use.

`arch_parameters()` (α + GGM) and `weight_parameters()` (everything else) are the two sides of
the bilevel search; engine/search.py updates them alternately.
"""

from __future__ import annotations

import torch
from torch import nn

from gasnas.config import SpaceConfig
from gasnas.ggm import GCNGuidedModule
from gasnas.space.cell import SearchCell, num_edges
from gasnas.space.network import SegmentationNet


class Supernet(SegmentationNet):
    def __init__(self, space: SpaceConfig, num_classes: int, alpha_init_std: float = 1e-3,
                 fast: bool = True, recompute_stages: int = 0) -> None:
        """`fast` runs every mixed op as one memory-lean autograd Function, channels-last
        (space/fused.py; same function, same parameters, same gradients up to rounding;
        `fast=False` is the plain DARTS-style reference). `recompute_stages`: see
        `set_recompute`."""
        super().__init__(space, num_classes, lambda p: SearchCell(
            space.ops, p.c_prev_prev, p.c_prev, p.c, space.nodes, p.reduction, p.reduction_prev,
            fused=fast), channels_last=fast)
        if fast:
            self.to(memory_format=torch.channels_last)
        self.set_recompute(recompute_stages)
        edges, n_ops = num_edges(space.nodes), len(space.ops)
        # One α tensor per cell: cells are independent (GAS), unlike DARTS' two shared α.
        self.alphas = nn.ParameterList(
            nn.Parameter(alpha_init_std * torch.randn(edges, n_ops)) for _ in self.plans)
        self.ggm = GCNGuidedModule(n_ops, space.ggm.mode, space.ggm.gamma, space.ggm.embed_dim)

    def set_recompute(self, stages: int) -> None:
        """In the cells of the first `stages` stages (0: none, 1: the 1/8 stage, ...), the fast
        path recomputes 1x1 convs in backward instead of storing their outputs: the mixed ops'
        separable pointwise convs (4 fewer stored feature maps per edge) and the cell's input
        and output projections (their conv outputs and the concatenation of the nodes: 4 maps
        per cell), for one extra 1x1 conv each in backward. Early stages have the largest maps,
        so they save the most memory per extra FLOP."""
        for plan, cell in zip(self.plans, self.cells):
            cell.recompute = plan.stage < stages
            for m in cell.mixed:
                m.recompute = plan.stage < stages

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas) + list(self.ggm.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def guided_alphas(self) -> list[torch.Tensor]:
        """α' = GGM(α): what the forward pass, the latency estimate and derivation all use."""
        return self.ggm(list(self.alphas))

    def op_weights(self) -> list[torch.Tensor]:
        return [torch.softmax(a, dim=-1) for a in self.guided_alphas()]

    def cell_weights(self) -> list[torch.Tensor | None]:
        return list(self.op_weights())
