"""CPU speed table: a derived GAS net vs the torchvision real-time peers, torch eager vs ONNX
Runtime, at 360x480 (CamVid) and 1024x2048 (Cityscapes), batch 1, fp32, all in one run.

Per (size, backend) block the four networks are timed interleaved (round-robin, see
gasnas.deploy.bench), so drift hits them equally; ratios are latency / derived-net latency on
the same backend. Next to it: the derived net's achieved GFLOP/s against this CPU's measured
fp32 peak (a 2048x2048 matmul in torch and in ONNX Runtime, timed in the same interleaved
rounds as the networks, so the same drift and contention hit it), i.e. how close to the limit
the net runs.

    python benchmarks/bench_peers.py [GENOTYPE.json] [--sizes 360x480,1024x2048]
        [--runs 10] [--warmup 2] [--large-runs 3] [--large-warmup 1] [--threads N]
        [--out runs/bench_peers] [--lock /tmp/gasnas-cpu.lock] [--quiet 0.1] [--max-wait 120]

Without a genotype, one is derived from an untrained default-space supernet (seed 0): a stand-in
of the right size, not a searched architecture; the script says so. `--lock` takes that file's
exclusive flock around each measurement block only (so no single hold gets long). Holding it, the
script waits (up to --max-wait s) until other processes use less than --quiet of the CPU before
each block, and it records how much CPU they used during every block: a lock only keeps out those who
take it, and on a 2-core machine one foreign busy thread can slow torch's OpenMP several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from gasnas.fileio import exclusive_lock as exclusive

LARGE = 1024 * 1024  # sizes with at least this many pixels use --large-runs/--large-warmup


def _busy_s() -> float | None:
    """CPU-seconds all processes of this machine have been busy (Linux /proc/stat), or None."""
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


class ForeignLoad:
    """How much of the CPU other processes used while a block ran (0 = the machine was ours)."""

    def __enter__(self) -> ForeignLoad:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_s(), _own_s()
        self.fraction: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy1 = _busy_s()
        if self.busy0 is None or busy1 is None:
            return
        wall = time.perf_counter() - self.t0
        foreign = (busy1 - self.busy0) - (_own_s() - self.own0)
        self.fraction = max(0.0, foreign / (wall * (os.cpu_count() or 1)))


def wait_quiet(threshold: float, max_wait: float) -> float | None:
    """Wait (up to max_wait s) until other processes use less than `threshold` of the CPU."""
    start = time.monotonic()
    said = -1.0
    while True:
        with ForeignLoad() as load:
            time.sleep(2.0)
        waited = time.monotonic() - start
        if load.fraction is None or load.fraction < threshold or waited > max_wait:
            return load.fraction
        if waited - said >= 30:
            said = waited
            print(f"waiting for a quiet CPU: other processes use {load.fraction:.0%} of it "
                  f"({waited:.0f}/{max_wait:.0f} s)", file=sys.stderr)


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
    base.pop("extras", None)  # per-block matmul peaks are kept under "achieved"
    return base


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def main(argv: list[str] | None = None) -> int:
    from gasnas.config import parse_size
    from gasnas.deploy.bench import (
        BenchModel,
        markdown_table,
        matmul_runner,
        ort_matmul_runner,
        run_bench,
        summary_lines,
    )
    from gasnas.fileio import write_json_atomic as write_json
    from gasnas.fileio import write_text_atomic as write_text
    from gasnas.models import PEERS, build_peer, complexity
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
    ap.add_argument("--quiet", type=float, default=0.1,
                    help="before each block wait until other processes use less than this CPU fraction")
    ap.add_argument("--max-wait", type=float, default=120, help="...but at most this many seconds")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or torch.get_num_threads()
    sizes = [parse_size(s, "--sizes") for s in args.sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    genotype, origin = derived_genotype(args.genotype, out)
    print(origin, file=sys.stderr)

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
            with exclusive(args.lock):  # keeps out those who take the lock; then wait out the rest
                before = wait_quiet(args.quiet, args.max_wait)
                with ForeignLoad() as load:
                    extras = {"matmul_torch": matmul_runner(args.peak_n),
                              "matmul_onnxruntime": ort_matmul_runner(args.peak_n, threads)}
                    block = run_bench(models, size, [backend], "cpu", "fp32", threads, warmup, runs,
                                      progress=True, extras=extras)
            block["foreign_cpu_load"] = {"before": before, "during": load.fraction}
            block["block_s"] = time.perf_counter() - load.t0
            mms = {k: {**v, "gflops_per_s": 2 * args.peak_n ** 3 / 1e9 / (v["median_ms"] / 1e3)}
                   for k, v in block["extras"].items()}
            best = max(mms, key=lambda k: mms[k]["gflops_per_s"])
            peak = {"n": args.peak_n, "gflops_per_s": mms[best]["gflops_per_s"], "by": best, "matmuls": mms}
            ref = block["models"][0]["results"][backend]
            achieved = ref.get("gflops_per_s")
            block["achieved"] = {backend: {"gflops_per_s": achieved, "peak": peak,
                                           "fraction_of_peak": achieved / peak["gflops_per_s"] if achieved else None}}
            blocks.append(block)
            print(f"{size[0]}x{size[1]} {backend}: {block['block_s']:.0f} s (+{time.perf_counter() - t0 - block['block_s']:.0f} s "
                  f"waiting), matmul torch {mms['matmul_torch']['gflops_per_s']:.1f} / onnxruntime "
                  f"{mms['matmul_onnxruntime']['gflops_per_s']:.1f} GFLOP/s, other processes' CPU load during it: "
                  f"{_pct(load.fraction)}", file=sys.stderr)
        report = merge(blocks)
        report["achieved"] = {b: blk["achieved"][b] for b, blk in zip(backends, blocks)}
        report["foreign_cpu_load"] = {b: blk["foreign_cpu_load"] for b, blk in zip(backends, blocks)}
        report["block_s"] = {b: blk["block_s"] for b, blk in zip(backends, blocks)}
        per_size.append(report)

    # The CPU's practical peak: the best matmul median of the whole run (in-block matmuls sag
    # with the machine's drift, so each block's own one is given too).
    best_peak = max(a["peak"]["gflops_per_s"] for r in per_size for a in r["achieved"].values())
    for r in per_size:
        for a in r["achieved"].values():
            a["fraction_of_best_peak"] = a["gflops_per_s"] / best_peak if a["gflops_per_s"] else None
    wall = time.perf_counter() - t_start
    measuring = sum(v for r in per_size for v in r["block_s"].values())
    lines = ["# Derived GAS net vs torchvision peers (CPU, batch 1, fp32)", "",
             f"Command: `python benchmarks/bench_peers.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
             f"  — wall time {wall:.0f} s ({measuring:.0f} s measuring, the rest waiting for the lock "
             "or a quiet CPU)", "", origin + ".", "",
             f"Peak: a {args.peak_n}x{args.peak_n} fp32 matmul in torch (MKL) and in ONNX Runtime (MLAS), "
             f"{threads} threads, both timed in the same rounds as the networks of every block; the "
             f"faster one's median is the block's peak; the best block's, {best_peak:.1f} GFLOP/s, is "
             "this CPU's peak.", "",
             "GFLOP/s are nominal (FLOPs counted by torch's FlopCounterMode, every kernel tap): ONNX "
             "Runtime's direct convolutions likely skip taps that fall in the zero padding, so nets with "
             "large dilations on small feature maps (deeplabv3's ASPP, rates 12/24/36) can exceed the "
             "matmul peak.", ""]
    for report in per_size:
        h, w = report["input_size"]
        lines += [f"## {h}x{w}", ""] + summary_lines(report) + ["", markdown_table(report, throughput=True)]
        ach = "; ".join(f"{b} {a['gflops_per_s']:.1f} GFLOP/s = {a['fraction_of_best_peak']:.0%} of the "
                        f"peak ({a['fraction_of_peak']:.0%} of the matmul timed in the same rounds, "
                        f"{a['peak']['gflops_per_s']:.1f} GFLOP/s)"
                        for b, a in report["achieved"].items() if a["fraction_of_peak"] is not None)
        foreign = ", ".join(f"{b} block {_pct(v['during'])}" for b, v in report["foreign_cpu_load"].items())
        lines += [f"Derived net achieved: {ach}.", "",
                  f"CPU used by other processes while the blocks ran: {foreign}.", ""]
        busy = [b for b, v in report["foreign_cpu_load"].items()
                if v["during"] is not None and v["during"] > args.quiet]
        if busy:
            lines += [f"**Warning:** other processes used more than {args.quiet:.0%} of the CPU during "
                      f"the {', '.join(busy)} block(s) of this size: those columns are not trustworthy "
                      "(on 2 cores torch's OpenMP slows down many-fold when a core is taken); rerun.", ""]
    text = "\n".join(lines)
    write_text(out / "bench_peers.md", text)
    write_json(out / "bench_peers.json", {"genotype": genotype.to_dict(), "genotype_origin": origin,
                                          "peak_gflops_per_s": best_peak, "sizes": per_size,
                                          "wall_s": wall, "measuring_s": measuring,
                                          "threads": threads})
    print(text)
    print(f"wrote {out / 'bench_peers.md'} and {out / 'bench_peers.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
