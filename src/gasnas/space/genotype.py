"""Genotype: the discrete architecture a search derives, saved as schema-versioned JSON.

It carries everything needed to rebuild and judge the network elsewhere: the space config, the
kept edges and ops of every cell, the predicted latency, and provenance (dataset, seed, gasnas
version, date), like torchvision's weight records. Loading validates every field and names the
bad one.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gasnas import __version__
from gasnas.config import RECIPE_DIR, SpaceConfig, build_dataclass
from gasnas.errors import GasnasError
from gasnas.fileio import read_json, write_json_atomic
from gasnas.space.cell import edge_index
from gasnas.space.network import plan_cells
from gasnas.space.ops import OPS

SCHEMA_VERSION = 1
Edge = tuple[int, int, str]  # (source state, target node, op)


@dataclass
class CellGene:
    reduction: bool
    edges: list[Edge]


@dataclass
class Genotype:
    space: SpaceConfig
    num_classes: int
    cells: list[CellGene]
    predicted_latency_ms: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "num_classes": self.num_classes,
            "predicted_latency_ms": self.predicted_latency_ms,
            "provenance": self.provenance,
            "space": asdict(self.space),
            "cells": [{"reduction": c.reduction, "edges": [list(e) for e in c.edges]} for c in self.cells],
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> Genotype:
        return _parse(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """A genotype file, or the name of one shipped in gasnas/configs/genotypes."""
        path = resolve_genotype(path)
        return _parse(read_json(path, "genotype file"), str(path))

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in self.cells:
            for _, _, op in cell.edges:
                counts[op] = counts.get(op, 0) + 1
        return counts


SHIPPED_GENOTYPES = RECIPE_DIR / "genotypes"


def shipped_genotypes() -> list[str]:
    """Names of the genotypes shipped with gasnas (each with its search and training provenance)."""
    return sorted(p.stem for p in SHIPPED_GENOTYPES.glob("*.json"))


def resolve_genotype(name: str | Path) -> Path:
    """An existing path as it is; else a shipped genotype's name (`camvid-...`, with or without
    `.json`); else the path itself, so that reading it names the missing file."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (SHIPPED_GENOTYPES / f"{p.name}.json", SHIPPED_GENOTYPES / p.name):
        if p.parent == Path(".") and cand.is_file():
            return cand
    return p


def _parse(data: Any, source: str) -> Genotype:
    def bad(field_name: str, why: str) -> GasnasError:
        return GasnasError(f"{source}: field '{field_name}': {why}")

    if not isinstance(data, dict):
        raise GasnasError(f"{source}: a genotype must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise bad("schema_version", f"{version!r} is not supported (this gasnas reads {SCHEMA_VERSION})")
    for key in ("space", "cells", "num_classes"):
        if key not in data:
            raise bad(key, "missing")
    try:
        space = build_dataclass(SpaceConfig, data["space"], "space")
    except GasnasError as exc:
        raise GasnasError(f"{source}: {exc}") from None
    num_classes = data["num_classes"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise bad("num_classes", f"{num_classes!r} is not a positive integer")
    plans = plan_cells(space)
    cells_raw = data["cells"]
    if not isinstance(cells_raw, list) or len(cells_raw) != len(plans):
        n = len(cells_raw) if isinstance(cells_raw, list) else "no list"
        raise bad("cells", f"{n} cells, the space has {len(plans)}")
    cells = []
    for k, (raw, plan) in enumerate(zip(cells_raw, plans)):
        if not isinstance(raw, dict) or "edges" not in raw:
            raise bad(f"cells[{k}]", "expected an object with 'edges'")
        if bool(raw.get("reduction", plan.reduction)) != plan.reduction:
            raise bad(f"cells[{k}].reduction", f"the space has reduction={plan.reduction} here")
        edges: list[Edge] = []
        for i, e in enumerate(raw["edges"]):
            where = f"cells[{k}].edges[{i}]"
            if not (isinstance(e, (list, tuple)) and len(e) == 3):
                raise bad(where, "expected [source, node, op]")
            src, dst, op = e
            if not isinstance(dst, int) or not 0 <= dst < space.nodes:
                raise bad(where, f"node {dst!r} out of range 0..{space.nodes - 1}")
            if not isinstance(src, int) or not 0 <= src < 2 + dst:
                raise bad(where, f"source {src!r} out of range 0..{1 + dst} for node {dst}")
            if op not in OPS:
                raise bad(where, f"unknown op {op!r}")
            if op not in space.ops:
                raise bad(where, f"op {op!r} is not in the space's op list")
            edges.append((src, dst, op))
        cells.append(CellGene(plan.reduction, edges))
    latency = data.get("predicted_latency_ms")
    if latency is not None and not isinstance(latency, (int, float)):
        raise bad("predicted_latency_ms", f"{latency!r} is not a number")
    provenance = data.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise bad("provenance", "expected an object")
    return Genotype(space, num_classes, cells, latency, provenance, version)


SKIP_OP = "skip_connect"


def derive_cell(weights: torch.Tensor, ops: list[str], nodes: int, keep: int = 2,
                max_skip: int | None = None) -> list[Edge]:
    """Per node keep the `keep` incoming edges with the strongest non-`none` op weight; each kept
    edge takes its argmax non-`none` op. `weights` is softmax(α'_k), shape [edges, ops].

    `max_skip` (P-DARTS): at most that many kept edges of the cell keep `skip_connect` (those
    with the largest skip weight); the others take their best op other than `none` and skip."""
    usable = torch.tensor([not OPS[o].free for o in ops])
    w = weights.detach().float().cpu().masked_fill(~usable, float("-inf"))
    best_w, best_op = w.max(dim=1)
    edges = edge_index(nodes)
    kept: list[int] = []
    for j in range(nodes):
        incoming = [e for e, (_, dst) in enumerate(edges) if dst == j]
        kept += sorted(sorted(incoming, key=lambda e: (-float(best_w[e]), e))[:keep])
    choice = {e: int(best_op[e]) for e in kept}
    if max_skip is not None and SKIP_OP in ops:
        skip = ops.index(SKIP_OP)
        skips = sorted((e for e in kept if choice[e] == skip), key=lambda e: (-float(w[e, skip]), e))
        no_skip = w.clone()
        no_skip[:, skip] = float("-inf")
        for e in skips[max(0, max_skip):]:
            if torch.isfinite(no_skip[e]).any():
                choice[e] = int(no_skip[e].argmax())
    return [(edges[e][0], edges[e][1], ops[choice[e]]) for e in kept]


def derive_genotype(supernet: Any, provenance: dict[str, Any] | None = None,
                    predicted_latency_ms: float | None = None, max_skip: int | None = None) -> Genotype:
    """Discretise a supernet's α' (after the GGM) into a Genotype (`max_skip`: see derive_cell)."""
    with torch.no_grad():
        weights = supernet.op_weights()
    cells = [CellGene(p.reduction, derive_cell(w, supernet.space.ops, supernet.space.nodes, max_skip=max_skip))
             for p, w in zip(supernet.plans, weights)]
    prov = {"gasnas_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    prov.update(provenance or {})
    return Genotype(supernet.space, supernet.num_classes, cells, predicted_latency_ms, prov)


def genotype_weights(genotype: Genotype) -> list[torch.Tensor]:
    """One-hot op weights [edges, ops] per cell for a genotype (dropped edges are all-zero):
    feeding these to the latency estimator gives the genotype's predicted latency."""
    space = genotype.space
    edges = edge_index(space.nodes)
    out = []
    for cell in genotype.cells:
        w = torch.zeros(len(edges), len(space.ops))
        for src, dst, op in cell.edges:
            w[edges.index((src, dst)), space.ops.index(op)] = 1.0
        out.append(w)
    return out
