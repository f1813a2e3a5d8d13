"""Cells: a DARTS-style DAG over two inputs and `nodes` intermediate nodes.

Edges are numbered node by node: node j (0-based) receives one edge from each of the two cell
inputs and from every earlier node, so `edge_index()` lists (source, node) pairs in α-row order.
Source 0 is the cell two back, 1 the previous cell, 2+i intermediate node i.
`SearchCell` puts a mixed op on every edge; `DerivedCell` keeps only the genotype's edges.
Both share the input preprocessing and the output projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gasnas.space.fused import (
    MixedSpec,
    factorized_fusable,
    factorized_reduce,
    fusable,
    fused_allowed,
    mixed_op,
    pointwise_bn_relu,
    pointwise_fusable,
    spec_ready,
)
from gasnas.space.ops import OPS, ConvBNReLU, FactorizedReduce


@dataclass
class PathSample:
    """One op per edge of a cell: `index[e]` is edge e's op (an index into the space's ops) and
    `weights` [edges, ops] carries its (straight-through) weight; only the indexed ops run.

    `all_ops` (the architecture step): the other ops of each edge run too, without a graph, and
    enter as (w_o − w_o.detach())·op_o(x): the forward value is still the single path, but every
    op's weight gets the gradient ⟨∂L/∂y, op_o(x)⟩ (ProxylessNAS's binary-gate estimator), a
    comparison of the ops rather than only the drawn op's scale.

    `rivals` (the architecture step's `pair` gradient): one more op per edge runs without a graph
    and enters the same way, so the drawn op and its rival are compared.
    """

    weights: torch.Tensor
    index: list[int]
    all_ops: bool = False
    rivals: list[int] | None = None


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

    `fused=True` (the search default) computes the identity, max-pool, conv-BN-ReLU and
    separable-conv branches in one memory-lean autograd Function (space/fused.py: recomputes
    BatchNorm/ReLU/depthwise outputs in backward, folds the op weights into BatchNorm, fast
    depthwise backward); any other op (e.g. FactorizedReduce on reduction edges) is added
    through plain autograd. Same function, same parameters, same BatchNorm running-statistics
    updates as the plain loop (`fused=False`, kept as the reference; tests/test_space.py and
    benchmarks/supernet_step.py check outputs and gradients agree). With BatchNorm modules
    other than plain nn.BatchNorm2d (GlobalBatchNorm2d under several processes), and under
    autocast (search.amp; space/fused.py `fused_allowed`), the plain loop runs.

    `nonnegative_weights`: the weights this op is given are >= 0 by construction (a search
    cell's softmax mixtures), so the fused path folds them into BatchNorm without reading
    their sign off the device; False (the default here) is right for weights of any sign.
    """

    def __init__(self, ops: list[str], c: int, stride: int, fused: bool = True) -> None:
        super().__init__()
        self.op_names = list(ops)
        self.active = [i for i, name in enumerate(ops) if not OPS[name].free]
        self.ops = nn.ModuleList(OPS[ops[i]](c, c, stride) for i in self.active)
        self.fused = fused
        self.stride = stride
        self.recompute = False  # fused path: recompute the separable pointwise outputs in backward
        self.nonnegative_weights = False  # fused path: fold the op weights into BatchNorm

    def spec(self) -> tuple[MixedSpec, list[int]]:
        """The fused branches (as weight indices and modules) and the indices of the others
        (built once: the ops of a MixedOp do not change)."""
        cached = self.__dict__.get("_spec")
        if cached is None:
            cached = self.__dict__["_spec"] = self._build_spec()
        cached[0].recompute = self.recompute
        cached[0].fold = self.nonnegative_weights
        return cached

    def _build_spec(self) -> tuple[MixedSpec, list[int]]:
        spec, rest = MixedSpec(self.stride, recompute=self.recompute), []
        for k, op in enumerate(self.ops):
            kind, i = fusable(op), self.active[k]
            if kind == "identity" and spec.identity is None:
                spec.identity = i
            elif kind == "pool" and spec.pool is None and op.stride in (self.stride, (self.stride,) * 2):
                spec.pool = i
            elif kind == "conv":
                spec.convs.append((i, op))
            elif kind == "sep" and op[0].stride == (self.stride,) * 2:
                spec.seps.append((i, op))
            else:
                rest.append(k)
        return spec.finalize(), rest

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: int | None = None,
                all_ops: bool = False, rival: int | None = None) -> torch.Tensor | None:
        """Σ_o w_o·op_o(x); with `index`, only that op: w_index·op_index(x) (None for a free op
        such as `none`, which adds nothing); `all_ops`, `rival`: see `PathSample`."""
        if index is not None:
            out = (weights[index] * self.ops[self.active.index(index)](x)) if index in self.active else None
            if (all_ops or rival is not None) and weights.requires_grad:
                for k, op in enumerate(self.ops):
                    i = self.active[k]
                    if i != index and (all_ops or i == rival):
                        with torch.no_grad():
                            y = op(x)
                        term = (weights[i] - weights[i].detach()) * y
                        out = term if out is None else out + term
            return out
        if self.fused and fused_allowed(x):
            spec, rest = self.spec()
            if spec_ready(spec):
                out = mixed_op(spec, x, weights)
                for k in rest:
                    op, w = self.ops[k], weights[self.active[k]]
                    out = out + (factorized_reduce(op, x, w, spec.fold) if factorized_fusable(op) else w * op(x))
                return out
        return _weighted_sum((weights[self.active[k]], op(x)) for k, op in enumerate(self.ops))


def _weighted_sum(terms) -> torch.Tensor | None:
    out = None
    for w, y in terms:
        out = w * y if out is None else out + w * y
    return out


class SearchCell(CellBase):
    """Every edge carries a MixedOp weighted by this cell's softmax(α'_k)."""

    def __init__(self, ops: list[str], c_prev_prev: int, c_prev: int, c: int, nodes: int,
                 reduction: bool, reduction_prev: bool, fused: bool = True) -> None:
        super().__init__(c_prev_prev, c_prev, c, nodes, reduction, reduction_prev)
        self.edges = edge_index(nodes)
        self.mixed = nn.ModuleList(MixedOp(ops, c, self.edge_stride(src), fused) for src, _ in self.edges)
        for m in self.mixed:  # the cell's weights are softmax mixtures (Supernet.using)
            m.nonnegative_weights = True
        self.fused = fused
        self.recompute = False  # fused path: recompute the 1x1 projections' conv outputs in backward

    def forward(self, s0: torch.Tensor, s1: torch.Tensor,
                weights: torch.Tensor | PathSample | None = None) -> torch.Tensor:
        if isinstance(weights, PathSample) or not (self.fused and self.recompute and fused_allowed(s1)):
            return super().forward(s0, s1, weights)
        states = [_project(self.pre0, [s0]), _project(self.pre1, [s1])]
        for j in range(self.nodes):
            states.append(self.node(j, states, weights))
        return _project(self.post, states[2:])

    def node(self, j: int, states: list[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
        assert weights is not None, "SearchCell needs per-edge op weights"
        path = weights.index if isinstance(weights, PathSample) else None
        every = isinstance(weights, PathSample) and weights.all_ops
        rivals = weights.rivals if isinstance(weights, PathSample) else None
        w = weights.weights if isinstance(weights, PathSample) else weights
        out = None
        for e, (src, dst) in enumerate(self.edges):
            if dst != j:
                continue
            y = (self.mixed[e](states[src], w[e]) if path is None
                 else self.mixed[e](states[src], w[e], path[e], every, None if rivals is None else rivals[e]))
            if y is not None:
                out = y if out is None else out + y
        return out if out is not None else empty_node(states, self.c, self.reduction)


def _project(m: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """m(cat(inputs)), through `pointwise_bn_relu` (stores the inputs only) when m is a plain
    1x1 conv-BN-ReLU."""
    if pointwise_fusable(m):
        return pointwise_bn_relu(m, inputs)
    if len(inputs) == 1 and factorized_fusable(m):
        return factorized_reduce(m, inputs[0])
    return m(inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1))


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
            out = empty_node(states, self.c, self.reduction)
        return out


def empty_node(states: list[torch.Tensor], c: int, reduction: bool) -> torch.Tensor:
    """The zero map a node with no contributing edge holds (all its edges `none` or absent)."""
    ref = states[1]
    stride = 2 if reduction else 1
    return ref.new_zeros(ref.shape[0], c, -(-ref.shape[2] // stride), -(-ref.shape[3] // stride)).contiguous(
        memory_format=torch.channels_last if ref.is_contiguous(memory_format=torch.channels_last)
        and not ref.is_contiguous() else torch.contiguous_format)
