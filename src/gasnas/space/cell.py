"""Cells: a DARTS-style DAG over two inputs and `nodes` intermediate nodes.

Edges are numbered node by node: node j (0-based) receives one edge from each of the two cell
inputs and from every earlier node, so `edge_index()` lists (source, node) pairs in α-row order.
Source 0 is the cell two back, 1 the previous cell, 2+i intermediate node i.
`SearchCell` puts a mixed op on every edge; `DerivedCell` keeps only the genotype's edges.
Both share the input preprocessing and the output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gasnas.space.ops import OPS, ConvBNReLU, FactorizedReduce, SepConv


def edge_index(nodes: int) -> list[tuple[int, int]]:
    """(source, node) for every edge of a cell with `nodes` intermediate nodes, in α-row order."""
    return [(src, j) for j in range(nodes) for src in range(2 + j)]


def num_edges(nodes: int) -> int:
    return len(edge_index(nodes))


class CellBase(nn.Module):
    """Preprocess both inputs to C channels at this cell's input resolution; project the concat
    of the intermediate nodes back to C."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, nodes: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.nodes, self.reduction, self.c = nodes, reduction, c
        self.pre0 = (FactorizedReduce(c_prev_prev, c) if reduction_prev
                     else ConvBNReLU(c_prev_prev, c, kernel=1))
        self.pre1 = ConvBNReLU(c_prev, c, kernel=1)
        self.post = ConvBNReLU(nodes * c, c, kernel=1)

    def edge_stride(self, src: int) -> int:
        return 2 if self.reduction and src < 2 else 1

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for j in range(self.nodes):
            states.append(self.node(j, states, weights))
        return self.post(torch.cat(states[2:], dim=1))

    def node(self, j: int, states: list[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class MixedOp(nn.Module):
    """Σ_o w_o · op_o(x) over the candidate ops; `none` is skipped (it adds zero).

    `fused=True` (the search default) computes the separable-conv branches together: their
    depthwise outputs are concatenated, one grouped 1x1 conv, one BatchNorm and one ReLU run over
    all of them, and the weighted sum is one reduction. BatchNorm and 1x1 convs act per channel
    group, so this is the same function with the same parameters as the plain loop
    (`fused=False`, kept as the reference; benchmarks/supernet_step.py checks both agree).
    """

    def __init__(self, ops: list[str], c: int, stride: int, fused: bool = True) -> None:
        super().__init__()
        self.op_names = list(ops)
        self.active = [i for i, name in enumerate(ops) if not OPS[name].free]
        self.ops = nn.ModuleList(OPS[ops[i]](c, c, stride) for i in self.active)
        self.fused = fused
        self.sep = [k for k, m in enumerate(self.ops) if isinstance(m, SepConv)]
        self.rest = [k for k in range(len(self.ops)) if k not in self.sep]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if not self.fused or len(self.sep) < 2:
            return _weighted_sum((weights[self.active[k]], op(x)) for k, op in enumerate(self.ops))
        out = _weighted_sum((weights[self.active[k]], self.ops[k](x)) for k in self.rest)
        sep = _fused_sep_convs(x, [self.ops[k] for k in self.sep], weights[[self.active[k] for k in self.sep]])
        return sep if out is None else out + sep


def _weighted_sum(terms) -> torch.Tensor | None:
    out = None
    for w, y in terms:
        out = w * y if out is None else out + w * y
    return out


def _fused_sep_convs(x: torch.Tensor, seps: list[SepConv], w: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i · SepConv_i(x) with one grouped pointwise conv, one BN and one ReLU for all i."""
    n = len(seps)
    dws = [F.conv2d(x, m[0].weight, None, m[0].stride, m[0].padding, m[0].dilation, m[0].groups)
           for m in seps]
    h = F.conv2d(torch.cat(dws, dim=1), torch.cat([m[1].weight for m in seps], dim=0), groups=n)
    bns = [m[2] for m in seps]
    track = bns[0].training and bns[0].track_running_stats
    mean = torch.cat([b.running_mean for b in bns]) if bns[0].running_mean is not None else None
    var = torch.cat([b.running_var for b in bns]) if bns[0].running_var is not None else None
    h = F.batch_norm(h, mean, var, torch.cat([b.weight for b in bns]), torch.cat([b.bias for b in bns]),
                     bns[0].training or mean is None, bns[0].momentum, bns[0].eps)
    if track and mean is not None:
        with torch.no_grad():
            for b, m_i, v_i in zip(bns, mean.chunk(n), var.chunk(n)):
                b.running_mean.copy_(m_i)
                b.running_var.copy_(v_i)
                b.num_batches_tracked += 1
    h = torch.relu(h)
    b_, _, hh, ww = h.shape
    return (h.view(b_, n, -1, hh, ww) * w.view(1, n, 1, 1, 1)).sum(dim=1)


class SearchCell(CellBase):
    """Every edge carries a MixedOp weighted by this cell's softmax(α'_k)."""

    def __init__(self, ops: list[str], c_prev_prev: int, c_prev: int, c: int, nodes: int,
                 reduction: bool, reduction_prev: bool, fused: bool = True) -> None:
        super().__init__(c_prev_prev, c_prev, c, nodes, reduction, reduction_prev)
        self.edges = edge_index(nodes)
        self.mixed = nn.ModuleList(MixedOp(ops, c, self.edge_stride(src), fused) for src, _ in self.edges)

    def node(self, j: int, states: list[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
        assert weights is not None, "SearchCell needs per-edge op weights"
        out = None
        for e, (src, dst) in enumerate(self.edges):
            if dst != j:
                continue
            y = self.mixed[e](states[src], weights[e])
            out = y if out is None else out + y
        return out


class DerivedCell(CellBase):
    """Only the genotype's edges, each with its single chosen op."""

    def __init__(self, edges: list[tuple[int, int, str]], c_prev_prev: int, c_prev: int, c: int,
                 nodes: int, reduction: bool, reduction_prev: bool) -> None:
        super().__init__(c_prev_prev, c_prev, c, nodes, reduction, reduction_prev)
        self.edges = [(int(s), int(d), str(o)) for s, d, o in edges]
        self.ops = nn.ModuleList(OPS[o](c, c, self.edge_stride(s)) for s, _, o in self.edges)

    def node(self, j: int, states: list[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
        out = None
        for (src, dst, _), op in zip(self.edges, self.ops):
            if dst != j:
                continue
            y = op(states[src])
            out = y if out is None else out + y
        if out is None:  # a node with no kept edge (only possible with hand-written genotypes)
            ref = states[1]
            stride = 2 if self.reduction else 1
            out = ref.new_zeros(ref.shape[0], self.c, -(-ref.shape[2] // stride), -(-ref.shape[3] // stride))
        return out
