"""CPU speed table: a derived GAS net vs the torchvision real-time peers, torch eager vs ONNX
Runtime, at 360x480 (CamVid) and 1024x2048 (Cityscapes), batch 1, fp32, all in one run.

Per (size, backend) block the four networks are timed interleaved (round-robin, see
gasnas.deploy.bench), so drift hits them equally; ratios are latency / derived-net latency on
the same backend. Next to it: the derived net's achieved GFLOP/s against this CPU's measured
fp32 peak (a 2048x2048 matmul, timed with the same timer), i.e. how close to the limit it runs.

    python benchmarks/bench_peers.py [GENOTYPE.json] [--sizes 360x480,1024x2048]
        [--runs 10] [--warmup 2] [--large-runs 3] [--large-warmup 1] [--threads N]
        [--out runs/bench_peers] [--lock /tmp/gasnas-cpu.lock]

Without a genotype, one is derived from an untrained default-space supernet (seed 0): a stand-in
of the right size, not a searched architecture; the script says so. `--lock` takes that file's
exclusive flock around each measurement block only (so no single hold gets long).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

LARGE = 1024 * 1024  # sizes with at least this many pixels use --large-runs/--large-warmup


@contextlib.contextmanager
def exclusive(lock: str | None) -> Iterator[None]:
    if lock is None:
        yield
        return
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def derived_genotype(path: str | None, out: Path):
    from gasnas.config import SpaceConfig
    from gasnas.space import Genotype, Supernet, derive_genotype

    if path:
        return Genotype.load(path), f"genotype {path}"
    torch.manual_seed(0)
    g = derive_genotype(Supernet(SpaceConfig(), num_classes=11), provenance={
        "note": "derived from an untrained default-space supernet, seed 0 (benchmarks/bench_peers.py)"})
    g.save(out / "default_genotype.json")
    return g, ("no genotype given: derived one from an untrained default-space supernet "
               f"(torch.manual_seed(0), 11 classes), saved as {out / 'default_genotype.json'}")


def merge(reports: list[dict]) -> dict:
    """Reports of the same models at one size, one per backend → one report with every column."""
    base = json.loads(json.dumps(reports[0]))
    base["backends"] = [b for r in reports for b in r["backends"]]
    for r in reports[1:]:
        for m_base, m in zip(base["models"], r["models"]):
            m_base["results"].update(m["results"])
        base["environment"].update(r["environment"])
    base["environment"]["backend"] = ",".join(base["backends"])
    return base


def main(argv: list[str] | None = None) -> int:
    from gasnas.deploy.bench import (
        BenchModel,
        markdown_table,
        measure_matmul_peak,
        run_bench,
        summary_lines,
    )
    from gasnas.deploy.files import write_json, write_text
    from gasnas.deploy.models import PEERS, build_peer, complexity, parse_size
    from gasnas.space import DerivedNet

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("genotype", nargs="?", help="genotype JSON (default: derive a stand-in, see above)")
    ap.add_argument("--sizes", default="360x480,1024x2048")
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--large-runs", type=int, default=3)
    ap.add_argument("--large-warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peak-n", type=int, default=2048)
    ap.add_argument("--out", default="runs/bench_peers")
    ap.add_argument("--lock", default=None, help="flock this file exclusively around each block")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or torch.get_num_threads()
    sizes = [parse_size(s, "--sizes") for s in args.sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    genotype, origin = derived_genotype(args.genotype, out)
    print(origin, file=sys.stderr)

    with exclusive(args.lock):
        peak = measure_matmul_peak(args.peak_n, "cpu", threads)
    print(f"matmul peak ({args.peak_n}^3 fp32, {threads} threads): {peak['gflops_per_s']:.1f} GFLOP/s",
          file=sys.stderr)

    torch.manual_seed(0)
    derived = DerivedNet(genotype).eval()
    per_size = []
    for size in sizes:
        large = size[0] * size[1] >= LARGE
        runs, warmup = (args.large_runs, args.large_warmup) if large else (args.runs, args.warmup)
        models = [BenchModel("gasnas", derived, *complexity(derived, size), args.genotype or "default stand-in", True)]
        for name in PEERS:
            peer = build_peer(name, genotype.num_classes)
            models.append(BenchModel(name, peer, *complexity(peer, size), f"torchvision {name}"))
        blocks = []
        for backend in backends:
            t0 = time.perf_counter()
            with exclusive(args.lock):
                blocks.append(run_bench(models, size, [backend], "cpu", "fp32", threads, warmup, runs,
                                        progress=True))
            print(f"{size[0]}x{size[1]} {backend}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        report = merge(blocks)
        ref = report["models"][0]
        report["achieved"] = {b: {"gflops_per_s": ref["results"][b].get("gflops_per_s"),
                                  "fraction_of_peak": (ref["results"][b]["gflops_per_s"] / peak["gflops_per_s"]
                                                       if ref["results"][b]["status"] == "ok" else None)}
                              for b in backends}
        per_size.append(report)

    wall = time.perf_counter() - t_start
    lines = ["# Derived GAS net vs torchvision peers (CPU, batch 1, fp32)", "",
             f"Command: `python benchmarks/bench_peers.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
             f"  — wall time {wall:.0f} s", "", origin + ".", "",
             f"Measured fp32 peak: {peak['gflops_per_s']:.1f} GFLOP/s ({args.peak_n}x{args.peak_n} matmul, "
             f"median of {peak['runs']}, {threads} threads).", ""]
    for report in per_size:
        h, w = report["input_size"]
        lines += [f"## {h}x{w}", ""] + summary_lines(report) + ["", markdown_table(report, throughput=True)]
        ach = ", ".join(f"{b} {a['gflops_per_s']:.1f} GFLOP/s = {a['fraction_of_peak']:.0%} of peak"
                        for b, a in report["achieved"].items() if a["fraction_of_peak"] is not None)
        lines += [f"Derived net achieved: {ach}.", ""]
    text = "\n".join(lines)
    write_text(out / "bench_peers.md", text)
    write_json(out / "bench_peers.json", {"genotype": genotype.to_dict(), "genotype_origin": origin,
                                          "peak": peak, "sizes": per_size, "wall_s": wall,
                                          "threads": threads})
    print(text)
    print(f"wrote {out / 'bench_peers.md'} and {out / 'bench_peers.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
