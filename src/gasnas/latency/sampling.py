"""Genotypes that span a space's latency range, for calibrating and validating the predictor.

Uniformly random genotypes all cost about the same (each cell averages over many ops), so rank
correlation on them only measures noise. Here sample i draws its ops with its own bias β_i
toward cheap (β > 0) or costly (β < 0) ops: on every kept edge, p(op) ∝ exp(−β_i · z_op), z the
op's standardised cost rank at that edge's shape. The β_i are stratified over [−B, B], so the
set runs from nearly all-cheapest to nearly all-costliest nets. Kept edges (two per node, as
derivation keeps) are drawn uniformly.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from gasnas.space.cell import edge_index
from gasnas.space.genotype import CellGene, Genotype
from gasnas.space.ops import OPS

BIAS_RANGE = 3.0


def genotype_signature(genotype: Genotype) -> str:
    """Identity of a genotype's architecture (ignoring provenance)."""
    return json.dumps([[list(e) for e in c.edges] for c in genotype.cells])


def spanning_genotypes(estimator: Any, n: int, seed: int = 0,
                       exclude: set[str] | None = None) -> list[Genotype]:
    """`n` genotypes of `estimator.space` whose latencies span its range (see module doc)."""
    space = estimator.space
    gen = torch.Generator().manual_seed(seed)
    usable = [i for i, op in enumerate(space.ops) if not OPS[op].free]
    edges = edge_index(space.nodes)
    exclude = set(exclude or ())
    if n <= 1:
        biases = torch.zeros(max(n, 0))
    else:
        biases = torch.linspace(-BIAS_RANGE, BIAS_RANGE, n)
        biases = biases + (torch.rand(n, generator=gen) - 0.5) * (2 * BIAS_RANGE / (n - 1))
        biases = biases[torch.randperm(n, generator=gen)]
    out: list[Genotype] = []
    seen = set(exclude)
    for i in range(n):
        for _attempt in range(20):
            g = _one(estimator, float(biases[i]), gen, usable, edges, i, seed)
            sig = genotype_signature(g)
            if sig not in seen:
                break
        seen.add(sig)
        out.append(g)
    return out


def _one(estimator: Any, bias: float, gen: torch.Generator, usable: list[int],
         edges: list[tuple[int, int]], i: int, seed: int) -> Genotype:
    space = estimator.space
    cells = []
    for cell_layout, costs in zip(estimator.layout.cells, estimator.raw_costs):
        chosen = []
        for j in range(space.nodes):
            incoming = [e for e, (_, dst) in enumerate(edges) if dst == j]
            perm = torch.randperm(len(incoming), generator=gen)[:2]
            for e in sorted(incoming[int(p)] for p in perm):
                c = costs[e, usable]
                ranks = c.argsort().argsort().double()
                z = (ranks - ranks.mean()) / (ranks.std() if len(usable) > 1 else 1.0)
                probs = torch.softmax(-bias * z, dim=0)
                pick = usable[int(torch.multinomial(probs, 1, generator=gen))]
                chosen.append((edges[e][0], j, space.ops[pick]))
        cells.append(CellGene(cell_layout.plan.reduction, chosen))
    prov = {"sampled_by": "gasnas.latency.sampling", "seed": seed, "index": i, "bias": round(bias, 4)}
    return Genotype(space, estimator.num_classes, cells, provenance=prov)
