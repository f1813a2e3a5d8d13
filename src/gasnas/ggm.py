"""GCN-Guided Module (GGM): lets neighbouring cells' architecture parameters talk.

Confirmed by the paper: the GGM takes α_{k-1} and α_k and outputs α'_k, which the supernet uses;
it exists only during search. Reconstructed here (docs/method.md): graph nodes are the edges of
the cells involved, a node's feature is its α row (one weight per op), the adjacency is
A = row-softmax(θ(X)·φ(X)ᵀ / √d), one GCN layer Z = A·X·W, and α'_k = α_k + γ·Z restricted to
cell k's rows. θ, φ, W are shared by all cell pairs and trained by the architecture optimizer.

Modes: `none` (α' = α, plain independent cells), `adjacent` (default: a graph over cells k-1
and k for every k ≥ 1; cell 0 keeps α'_0 = α_0), `global` (one graph over every cell).
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
        nn.init.normal_(self.weight.weight, std=0.1)

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """One GCN layer over graph nodes `x` [N, ops]: Z = softmax(θx·(φx)ᵀ/√d)·x·W."""
        scores = self.theta(x) @ self.phi(x).transpose(0, 1) / math.sqrt(self.embed_dim)
        adjacency = torch.softmax(scores, dim=-1)
        return self.weight(adjacency @ x)

    def forward(self, alphas: list[torch.Tensor]) -> list[torch.Tensor]:
        """α (one [edges, ops] tensor per cell) → α' (same shapes)."""
        if self.mode == "none" or len(alphas) == 0:
            return list(alphas)
        if self.mode == "global":
            stacked = torch.cat(list(alphas), dim=0)
            z = self.propagate(stacked)
            return list((stacked + self.gamma * z).split([a.shape[0] for a in alphas], dim=0))
        out = [alphas[0]]
        for k in range(1, len(alphas)):
            prev, cur = alphas[k - 1], alphas[k]
            z = self.propagate(torch.cat([prev, cur], dim=0))
            out.append(cur + self.gamma * z[prev.shape[0]:])
        return out
