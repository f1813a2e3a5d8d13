"""The supernet: independent α per cell (no sharing), passed through the GGM before use.

`arch_parameters()` (α + GGM) and `weight_parameters()` (everything else) are the two sides of
the bilevel search; engine/search.py updates them alternately.

What the cells are weighted with: by default softmax(α'_k) on every edge (DARTS). A search step
may instead hand the cells other weights for one forward pass (`Supernet.using`): a sampled
single path per edge (`sample_path`, hard Gumbel-softmax with a straight-through gradient, GDAS /
FBNet), or the argmax path (`argmax_path`), where each MixedOp runs only its chosen op.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from gasnas.config import SpaceConfig
from gasnas.ggm import GCNGuidedModule
from gasnas.space.cell import PathSample, SearchCell, num_edges
from gasnas.space.depthwise import autocast_active
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
        # One α tensor per cell: cells are independent (GAS), unlike DARTS' two shared α
        # (`space.alpha_sharing: shared`: one per cell type, normal first, then reduction).
        if space.alpha_sharing == "shared":
            kinds = sorted({p.reduction for p in self.plans})  # False (normal) before True
            self.cell_alpha = [kinds.index(p.reduction) for p in self.plans]
        else:
            self.cell_alpha = list(range(len(self.plans)))
        self.alphas = nn.ParameterList(
            nn.Parameter(alpha_init_std * torch.randn(edges, n_ops)) for _ in range(max(self.cell_alpha) + 1))
        self.ggm = GCNGuidedModule(n_ops, space.ggm.mode, space.ggm.gamma, space.ggm.embed_dim)
        self._step_weights: list[torch.Tensor] | list[PathSample] | None = None

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
        """α' = GGM(α), one tensor per cell: what the forward pass, the latency estimate and
        derivation all use. With shared α the GGM runs over the cell types and each cell takes
        its type's α'. Always fp32: autocast (search.amp) is off here, so α' and its gradients
        are not rounded to bf16/fp16 inside an autocast forward."""
        kind = self.alphas[0].device.type
        with torch.autocast(kind, enabled=False) if autocast_active(self.alphas[0]) else nullcontext():
            guided = self.ggm(list(self.alphas))
        return [guided[i] for i in self.cell_alpha]

    def op_weights(self) -> list[torch.Tensor]:
        return [torch.softmax(a, dim=-1) for a in self.guided_alphas()]

    def ggm_parameters(self) -> list[nn.Parameter]:
        return list(self.ggm.parameters())

    def cell_weights(self) -> list[torch.Tensor | PathSample | None]:
        if self._step_weights is not None:
            return list(self._step_weights)
        return list(self.op_weights())

    @contextmanager
    def using(self, weights: list[torch.Tensor] | list[PathSample] | None) -> Iterator[None]:
        """Forward passes inside weight the cells with `weights` (one per cell: [edges, ops]
        mixture weights, or a PathSample) instead of softmax(α'); None keeps the default.
        Mixture weights must be >= 0 (softmax mixtures are): the fused mixed op folds them into
        BatchNorm without looking at their sign (space/fused.py)."""
        previous, self._step_weights = self._step_weights, weights
        try:
            yield
        finally:
            self._step_weights = previous

    def sample_path(self, tau: float, generator: torch.Generator,
                    guided: list[torch.Tensor] | None = None) -> list[PathSample]:
        """One op per edge drawn by hard Gumbel-softmax at temperature `tau`: the forward value
        is one-hot (only the drawn op runs), the gradient that of softmax((α' + g)/τ) (straight
        through). The Gumbel noise comes from `generator` (CPU), so a seed fixes the draws.
        `guided`: this step's α' when the caller has it already (the GGM runs once)."""
        out = []
        for a in (guided if guided is not None else self.guided_alphas()):
            gumbel = _gumbel(a.shape, generator).to(device=a.device, dtype=a.dtype)
            soft = torch.softmax((torch.log_softmax(a, dim=-1) + gumbel) / tau, dim=-1)
            index = soft.detach().argmax(dim=-1)
            hard = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
            out.append(PathSample(hard - soft.detach() + soft, index.tolist()))
        return out

    def sample_pair(self, generator: torch.Generator, guided: list[torch.Tensor] | None = None) -> list[PathSample]:
        """Two ops per edge drawn without replacement from softmax(α') (Gumbel top-2): the first
        runs with a graph, the second (`rivals`) without. Their weights are the softmax over the
        two ops' α' alone, straight through (forward 1 and 0): the gradient p₁p₂(g₁ − g₂) on the
        pair is zero when both ops help the loss equally, whichever is likelier, and the other
        ops' α' get none (ProxylessNAS's two-path update)."""
        guided = guided if guided is not None else self.guided_alphas()
        if guided[0].shape[-1] < 2:
            return self.sample_path(1.0, generator, guided)
        out = []
        for a in guided:
            scores = torch.log_softmax(a.detach(), dim=-1).cpu().double() + _gumbel(a.shape, generator)
            pair = scores.topk(2, dim=-1).indices.to(a.device)
            p = torch.softmax(a.gather(-1, pair), dim=-1)
            first = torch.zeros_like(p)
            first[:, 0] = 1.0
            weights = torch.zeros_like(a).scatter(-1, pair, first - p.detach() + p)
            out.append(PathSample(weights, pair[:, 0].tolist(), rivals=pair[:, 1].tolist()))
        return out

    def sample_uniform(self, generator: torch.Generator) -> list[PathSample]:
        """One op per edge drawn uniformly (the weight step's `search.weight_path: uniform`), one-hot,
        no gradient: every op is trained equally often, whatever α' says."""
        out = []
        for a in (self.alphas[i] for i in self.cell_alpha):
            index = torch.randint(a.shape[-1], (a.shape[0],), generator=generator)
            hard = torch.zeros(a.shape, dtype=a.dtype).scatter_(-1, index.unsqueeze(-1), 1.0).to(a.device)
            out.append(PathSample(hard, index.tolist()))
        return out

    def argmax_path(self) -> list[PathSample]:
        """Each edge's likeliest op under α' (`none` included), one-hot: a single path that
        evaluates what the sampled search has learnt, at the cost of one op per edge."""
        out = []
        with torch.no_grad():
            for w in self.op_weights():
                index = w.argmax(dim=-1)
                out.append(PathSample(torch.zeros_like(w).scatter_(-1, index.unsqueeze(-1), 1.0), index.tolist()))
        return out


def _gumbel(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise (fp64, CPU) from `generator`, so a seed fixes every draw."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return -(-u.log()).log()
