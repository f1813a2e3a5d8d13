"""GCN-Guided Module (GGM): lets neighbouring cells' architecture parameters talk.

Confirmed by the paper: the GGM takes α_{k-1} and α_k and outputs α'_k, which the supernet uses;
it exists only during search. Reconstructed here (docs/method.md "GGM graph"):

    X   = standardise(rows of α_{k-1} and α_k)        one graph node per edge, one feature per op
    A   = row-softmax(θ(X) · φ(X)ᵀ / √d)              learned adjacency between the edges
    Z   = A · X · W                                    one GCN layer
    α'_k = α_k + γ · (Z_k − mean over cell k's edges of Z_k)

Why each part:
- Standardised rows (zero mean, unit variance per edge): α starts at ~1e-3, and with raw rows θ(X)
  and φ(X) are their biases, the adjacency is exactly uniform and Z is the same for every edge.
  Standardised rows are scale-free: the graph sees each edge's op *preference*, whatever α's size.
- The per-cell common mode of Z is removed: a Z row shared by every edge of a cell is one op bias
  per cell, which can only amplify a gradient that all edges share (in practice the latency
  term's, which pushed every cell to the cheap ops). What is left is edge-to-edge information.
- W starts at zero, so α' = α at the start; θ and φ start random, so the adjacency is informative
  from the first step. W gets a gradient at once; θ and φ from the step after W first moves.
  The architecture optimizer trains θ, φ, W without weight decay (engine/architect.py).

Modes: `none` (α' = α, plain independent cells), `adjacent` (default: a graph over cells k-1
and k for every k ≥ 1; cell 0 keeps α'_0 = α_0), `global` (one graph over every cell).
"""

from __future__ import annotations

import math

import torch
from torch import nn

FEATURE_EPS = 1e-8  # floor on an α row's std before standardising (α starts at ~1e-3)


def standardise_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row to zero mean and unit variance: the GGM's scale-free node features."""
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred / centred.pow(2).mean(dim=-1, keepdim=True).add(FEATURE_EPS ** 2).sqrt()


class GCNGuidedModule(nn.Module):
    def __init__(self, num_ops: int, mode: str = "adjacent", gamma: float = 0.5,
                 embed_dim: int = 16) -> None:
        super().__init__()
        if mode not in ("none", "adjacent", "global"):
            raise ValueError(f"unknown GGM mode {mode!r}")
        self.mode, self.gamma, self.embed_dim = mode, gamma, embed_dim
        self.theta = nn.Linear(num_ops, embed_dim)
        self.phi = nn.Linear(num_ops, embed_dim)
        self.weight = nn.Linear(num_ops, num_ops, bias=False)
        nn.init.zeros_(self.weight.weight)  # α' = α at the start

    def adjacency(self, x: torch.Tensor) -> torch.Tensor:
        """Row-softmax(θ(X)·φ(X)ᵀ/√d) over graph nodes `x` [N, ops] (raw α rows)."""
        feats = standardise_rows(x)
        scores = self.theta(feats) @ self.phi(feats).transpose(0, 1) / math.sqrt(self.embed_dim)
        return torch.softmax(scores, dim=-1)

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """One GCN layer over graph nodes `x` [N, ops]: Z = A·X·W on standardised rows."""
        return self.weight(self.adjacency(x) @ standardise_rows(x))

    def _update(self, cur: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """α'_k = α_k + γ·(Z_k minus its mean over the cell's edges)."""
        return cur + self.gamma * (z - z.mean(dim=0, keepdim=True))

    def graphs(self, alphas: list[torch.Tensor]) -> list[torch.Tensor]:
        """The node sets the mode builds graphs over (for diagnostics): [α_{k-1}; α_k] per k ≥ 1
        (`adjacent`), all cells stacked (`global`), none (`none`)."""
        if self.mode == "none" or not alphas:
            return []
        if self.mode == "global":
            return [torch.cat(list(alphas), dim=0)]
        return [torch.cat([alphas[k - 1], alphas[k]], dim=0) for k in range(1, len(alphas))]

    def forward(self, alphas: list[torch.Tensor]) -> list[torch.Tensor]:
        """α (one [edges, ops] tensor per cell) → α' (same shapes)."""
        if self.mode == "none" or len(alphas) == 0:
            return list(alphas)
        if self.mode == "global":
            stacked = torch.cat(list(alphas), dim=0)
            zs = self.propagate(stacked).split([a.shape[0] for a in alphas], dim=0)
            return [self._update(a, z) for a, z in zip(alphas, zs)]
        out = [alphas[0]]
        for k in range(1, len(alphas)):
            prev, cur = alphas[k - 1], alphas[k]
            z = self.propagate(torch.cat([prev, cur], dim=0))
            out.append(self._update(cur, z[prev.shape[0]:]))
        return out


def adjacency_entropy(ggm: GCNGuidedModule, alphas: list[torch.Tensor]) -> float | None:
    """Mean row entropy of the GGM's adjacencies over its graphs, as a fraction of a uniform
    row's (1.0 = every edge attends to all alike; lower = the graph picks neighbours). None for
    mode `none`."""
    graphs = ggm.graphs(alphas)
    if not graphs:
        return None
    with torch.no_grad():
        values = []
        for x in graphs:
            a = ggm.adjacency(x).double().clamp_min(1e-12)
            values.append(float((-(a * a.log()).sum(-1)).mean() / math.log(x.shape[0])))
    return sum(values) / len(values)
