"""Can the trained supernet rank the ops its α chooses between? Per kept edge, the val loss of the
derived net inside the supernet with that edge's op swapped, for each search seed.

Why: seeds of the camvid search keep the same edges but agree on few ops. This asks where the
disagreement lives. For every kept edge of a search's final genotype, each candidate op (every
op that derivation may keep, `--ops` to narrow) is put on that edge, the other kept edges keep
their ops and the dropped edges are off, and the supernet's weights as the search left them
score the net by the mean cross-entropy of each image of a fixed val subset. BatchNorm
normalises each batch by its own statistics: the supernet's running statistics were gathered
over uniformly drawn paths that run every edge, not over this one (`eval_bn` in the report
shows what the running statistics give on the same images).

Reported per seed: how often α's preferred op (argmax α' among the candidates) is the one with
the lowest loss, and how often the lowest beats the runner-up by more than two paired standard
errors over the images. Across seeds, on the edges both keep: how often the two supernets'
lowest-loss ops agree, beside how often their α' agree. If the supernets' own rankings agree
no better than α does, no estimator of α can make the seeds agree; if they agree better, the
estimator is what loses the information.

    python benchmarks/op_ranking.py runs/search-convergence/seed0 runs/search-convergence/seed1 \
        runs/search-convergence/seed2 --out runs/op-ranking.json --lock /tmp/gasnas-cpu.lock

Each run folder needs config.yaml, genotype.json and checkpoints/last.pt (a finished search).
Per seed results are cached in OUT's folder (op_ranking_<run>.json), so a rerun continues.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gasnas.config import load_config
from gasnas.data.datasets import build_dataset
from gasnas.engine.evaluate import evaluate
from gasnas.engine.runtime import progress
from gasnas.fileio import exclusive_lock, torch_load, write_text_atomic
from gasnas.latency.validate import spearman
from gasnas.space.cell import PathSample, edge_index
from gasnas.space.genotype import Genotype
from gasnas.space.ops import OPS
from gasnas.space.supernet import Supernet

Key = tuple[int, int, int]  # (cell, source state, node)


def path_for(genotype: Genotype, ops: list[str], swap: tuple[Key, str] | None = None) -> list[PathSample]:
    """The genotype as a supernet path (dropped edges run nothing), with one kept edge's op
    replaced when `swap` is given."""
    edges = edge_index(genotype.space.nodes)
    out = []
    for c, cell in enumerate(genotype.cells):
        index = [-1] * len(edges)  # -1: no op runs on the edge
        weights = torch.zeros(len(edges), len(ops))
        for src, dst, op in cell.edges:
            if swap is not None and swap[0] == (c, src, dst):
                op = swap[1]
            e = edges.index((src, dst))
            index[e] = ops.index(op)
            weights[e, index[e]] = 1.0
        out.append(PathSample(weights, index))
    return out


@torch.no_grad()
def image_losses(supernet: Supernet, path: list[PathSample], batches: list[tuple[torch.Tensor, torch.Tensor]],
                 ignore_index: int) -> list[float]:
    """Mean cross-entropy per image, BatchNorm on each batch's own statistics."""
    supernet.train()
    out: list[float] = []
    with supernet.using(path):
        for images, labels in batches:
            logits = supernet(images)
            ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
            valid = (labels != ignore_index).flatten(1).sum(1).clamp_min(1)
            out += (ce.flatten(1).sum(1) / valid).tolist()
    return out


def rank_run(run: Path, n_images: int, batch: int, only_ops: list[str] | None, show: bool) -> dict[str, Any]:
    cfg = load_config(run / "config.yaml")
    genotype = Genotype.load(run / "genotype.json")
    ops = list(cfg.space.ops)
    candidates = [o for o in ops if not OPS[o].free and (only_ops is None or o in only_ops)]
    supernet = Supernet(cfg.space, genotype.num_classes)
    supernet.load_state_dict(torch_load(run / "checkpoints" / "last.pt")["supernet"])
    weights = [w.detach() for w in supernet.op_weights()]

    val = build_dataset(cfg.data, "val", False)
    picks = sorted({round(i * (len(val) - 1) / max(1, n_images - 1)) for i in range(n_images)})
    samples = [val[i][:2] for i in picks]
    batches = [(torch.stack([torch.as_tensor(x) for x, _ in samples[i:i + batch]]).contiguous(memory_format=torch.channels_last),
                torch.stack([torch.as_tensor(y) for _, y in samples[i:i + batch]]).long())
               for i in range(0, len(samples), batch)]
    ignore = cfg.data.ignore_index

    # what the running statistics give on these images (the search's epoch-end evaluation uses
    # them, on the argmax path), beside per-batch statistics, for the derived path
    base = path_for(genotype, ops)
    with supernet.using(base):
        eval_bn = evaluate(supernet, batches, genotype.num_classes, ignore)["miou"]
        supernet.train()
        batch_bn = evaluate(_TrainModeBN(supernet), batches, genotype.num_classes, ignore)["miou"]

    base_losses = image_losses(supernet, base, batches, ignore)
    keys = [(c, src, dst, op) for c, cell in enumerate(genotype.cells) for src, dst, op in cell.edges]
    edges = edge_index(genotype.space.nodes)
    rows = []
    for c, src, dst, current in progress(keys, show, desc=run.name):
        losses = {current: base_losses}
        for op in candidates:
            if op != current:
                losses[op] = image_losses(supernet, path_for(genotype, ops, ((c, src, dst), op)), batches, ignore)
        means = {o: statistics.fmean(v) for o, v in losses.items()}
        order = sorted(means, key=means.get)
        diffs = [b - a for a, b in zip(losses[order[0]], losses[order[1]])]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        alpha = weights[c][edges.index((src, dst))]
        alpha_best = max(candidates, key=lambda o: float(alpha[ops.index(o)]))
        rows.append({"cell": c, "source": src, "node": dst, "genotype_op": current, "alpha_op": alpha_best,
                     "loss_op": order[0], "margin": means[order[1]] - means[order[0]], "margin_se": se,
                     "loss": {o: round(means[o], 5) for o in order}})
    n = len(rows)
    return {
        "run": str(run), "images": len(samples), "candidates": candidates,
        "derived_path_miou": {"eval_bn": eval_bn, "batch_bn": batch_bn},
        "alpha_matches_loss": sum(r["alpha_op"] == r["loss_op"] for r in rows) / n,
        "genotype_matches_loss": sum(r["genotype_op"] == r["loss_op"] for r in rows) / n,
        "resolved": sum(r["margin"] > 2 * r["margin_se"] for r in rows) / n,
        "edges": rows,
    }


class _TrainModeBN(torch.nn.Module):
    """Evaluate a module without switching it to eval mode (BatchNorm on batch statistics)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.module.train()
        return self.module(x)


def pair_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Two seeds, on the kept edges both have: how often their lowest-loss (and α-preferred, and
    genotype) ops agree, beside what that share would be by chance given how often each op is
    chosen in each seed alone; and the mean Spearman ρ of the swapped ops' losses on an edge
    (leaving out both genotypes' own ops, whose loss is the unswapped net's)."""
    ea = {(r["cell"], r["source"], r["node"]): r for r in a["edges"]}
    eb = {(r["cell"], r["source"], r["node"]): r for r in b["edges"]}
    shared = sorted(set(ea) & set(eb))
    if not shared:
        return None
    out: dict[str, Any] = {"runs": [Path(a["run"]).name, Path(b["run"]).name], "shared_edges": len(shared)}
    for field in ("loss_op", "alpha_op", "genotype_op"):
        out[field] = sum(ea[k][field] == eb[k][field] for k in shared) / len(shared)
        ca = Counter(ea[k][field] for k in shared)
        cb = Counter(eb[k][field] for k in shared)
        out[f"{field}_chance"] = sum(ca[o] * cb[o] for o in ca) / len(shared) ** 2
    rhos = []
    for k in shared:
        own = {ea[k]["genotype_op"], eb[k]["genotype_op"]}
        ops = [o for o in ea[k]["loss"] if o not in own and o in eb[k]["loss"]]
        rhos.append(spearman([ea[k]["loss"][o] for o in ops], [eb[k]["loss"][o] for o in ops]))
    out["loss_spearman"] = statistics.fmean(r for r in rhos if math.isfinite(r))
    return out


def cross_seed(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every seed pair's `pair_stats`, and their mean."""
    pairs = [p for a, b in itertools.combinations(results, 2) if (p := pair_stats(a, b)) is not None]
    keys = [k for k in (pairs[0] if pairs else {}) if k != "runs"]
    return {"pairs": pairs, **{k: statistics.fmean(p[k] for p in pairs) for k in keys}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished search run folders")
    ap.add_argument("--out", type=Path, required=True, help="report JSON (a .md is written beside it)")
    ap.add_argument("--images", type=int, default=24, help="val images scored (evenly spaced)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ops", nargs="+", default=None, help="candidate ops (default: every non-free op)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lock", default=None, help="flock file held around each seed")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for run in args.runs:
        cache = args.out.parent / f"op_ranking_{run.name}.json"
        if cache.exists():
            results.append(json.loads(cache.read_text()))
            continue
        for need in ("config.yaml", "genotype.json", "checkpoints/last.pt"):
            if not (run / need).exists():
                print(f"{run / need}: not found (a finished search run folder is needed)", file=sys.stderr)
                return 2
        t0 = time.perf_counter()
        with exclusive_lock(args.lock):
            res = rank_run(run, args.images, args.batch, args.ops, not args.no_progress)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps(res, indent=1))
        results.append(res)
        print(f"{run}: α's op is the lowest-loss op on {res['alpha_matches_loss']:.0%} of kept edges, "
              f"resolved (> 2 SE) on {res['resolved']:.0%} ({res['wall_s']:.0f} s)")
    summary = {"runs": [{k: v for k, v in r.items() if k != "edges"} for r in results],
               "cross_seed": cross_seed(results) if len(results) > 1 else None}
    write_text_atomic(args.out, json.dumps(summary, indent=1))
    write_text_atomic(args.out.with_suffix(".md"), report(summary))
    print(report(summary))
    return 0


def report(summary: dict[str, Any]) -> str:
    lines = ["| run | images | derived path mIoU, running / batch BN | α's op = lowest loss | resolved > 2 SE |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in summary["runs"]:
        m = r["derived_path_miou"]
        lines.append(f"| {Path(r['run']).name} | {r['images']} | {100 * m['eval_bn']:.1f} / {100 * m['batch_bn']:.1f} "
                     f"| {r['alpha_matches_loss']:.0%} | {r['resolved']:.0%} |")
    cs = summary.get("cross_seed")
    if cs and cs.get("pairs"):
        lines += ["", f"Seed pairs, on the kept edges both keep ({len(summary['runs'][0]['candidates'])} candidate ops; "
                  "chance: the agreement expected from how often each seed picks each op):", "",
                  "| pair | shared edges | lowest-loss ops agree (chance) | α' agree (chance) | genotypes agree "
                  "| Spearman ρ of the swapped ops' losses |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for p in cs["pairs"]:
            lines.append(f"| {' – '.join(p['runs'])} | {p['shared_edges']} | {p['loss_op']:.0%} ({p['loss_op_chance']:.0%}) "
                         f"| {p['alpha_op']:.0%} ({p['alpha_op_chance']:.0%}) | {p['genotype_op']:.0%} "
                         f"| {p['loss_spearman']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
