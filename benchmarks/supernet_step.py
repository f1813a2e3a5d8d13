"""Supernet search-step speed: the fast supernet vs a plain DARTS-style mixed op, same run.

One search step = a weights step (forward + backward + SGD) and an α step (forward + backward +
Adam) at batch 8, 184x240, default space. Naive: plain DARTS mixed op (NCHW, one autograd node
per conv/BN/ReLU/product, a full backward in both steps). Fast: the supernet as search runs it
(`Supernet(fast=True)`: one memory-lean autograd Function per mixed op, channels-last; see
space/fused.py), stepped like engine/search.py `weight_step` and engine/architect.py
`Architect.step`: the weights step freezes α and the GGM (no α gradients), the α step freezes
the weights (no weight gradients). Both variants hold the same parameters; their outputs are
compared first (must agree to 1e-5) and so are their gradients (α, GGM, weights; fp64, train
mode). Throughput is images/s over timed steps; peak memory is the peak RSS of a fresh
subprocess per variant (CPU has no allocator statistics), same process setup for both. The
variants run alternately for `--rounds` rounds (each round a fresh subprocess per variant);
the ratios use each variant's best throughput and worst peak RSS.

    python benchmarks/supernet_step.py [--steps 3] [--rounds 2] [--batch 8] [--size 184x240]
        [--recompute-stages N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from gasnas.engine.architect import frozen


def make(fast: bool, seed: int = 0, recompute_stages: int | None = None):
    from gasnas.config import SearchConfig, SpaceConfig
    from gasnas.space import Supernet

    if recompute_stages is None:
        recompute_stages = SearchConfig().recompute_stages
    torch.manual_seed(seed)
    return Supernet(SpaceConfig(), 11, fast=fast, recompute_stages=recompute_stages)


def run_variant(fast: bool, steps: int, batch: int, size: list[int], recompute_stages: int | None) -> dict:
    """Time `steps` search steps (after one warm-up step); report images/s and peak RSS."""
    net = make(fast, recompute_stages=recompute_stages)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, *size, generator=g)
    y = torch.randint(0, 11, (batch, *size), generator=g)

    arch, weights = net.arch_parameters(), net.weight_parameters()

    def step() -> None:
        if fast:  # as the engine does: each step computes only the gradients it updates
            w_opt.zero_grad(set_to_none=True)
            with frozen(arch):
                F.cross_entropy(net(x), y).backward()
            w_opt.step()
            w_opt.zero_grad(set_to_none=True)  # freed before the α step, as weight_step does
            a_opt.zero_grad(set_to_none=True)
            with frozen(weights):
                F.cross_entropy(net(x), y).backward()
            a_opt.step()
        else:  # DARTS-style: a full backward in both steps, each optimizer steps its own side
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            w_opt.step()
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            a_opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"fast": fast, "images_per_s": batch * steps / dt, "s_per_step": dt / steps, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM (ru_maxrss would include the parent's RSS at
    fork, it survives exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_equal(batch: int, size: list[int], recompute_stages: int | None) -> dict[str, float]:
    """Max |Δoutput| in eval mode (fp32) and in train mode (fp64: in fp32, batch-statistics
    BatchNorm amplifies rounding-order differences over 14 cells to ~1e-4 relative), and the
    max relative gradient difference (max |Δg| / max |g|) of α + GGM and of the weights, fp64,
    train mode, gradients of the cross-entropy."""
    fast, ref = make(True, recompute_stages=recompute_stages), make(False)
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, *size, generator=g)
    y = torch.randint(0, 11, (batch, *size), generator=g)
    with torch.no_grad():
        eval_diff = float((fast.eval()(x) - ref.eval()(x)).abs().max())
    fast, ref, x = fast.double().train(), ref.double().train(), x.double()
    out = {"eval_fp32": eval_diff}
    grads = []
    for net in (fast, ref):
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), [p.grad for p in net.arch_parameters()],
                      [p.grad for p in net.weight_parameters()]))
    out["train_fp64"] = float((grads[0][0] - grads[1][0]).abs().max())
    for k, name in ((1, "grad_arch_rel"), (2, "grad_weights_rel")):
        a, b = torch.cat([t.flatten() for t in grads[0][k]]), torch.cat([t.flatten() for t in grads[1][k]])
        out[name] = float((a - b).abs().max() / b.abs().max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="naive/fast subprocess pairs, alternating")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="184x240")
    ap.add_argument("--json", default=None)
    ap.add_argument("--recompute-stages", type=int, default=None,
                    help="fast variant: search.recompute_stages (default: the config default)")
    ap.add_argument("--variant", choices=["fast", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = [int(v) for v in args.size.split("x")]
    if args.variant:  # child process: one variant, fresh RSS
        print(json.dumps(run_variant(args.variant == "fast", args.steps, args.batch, size, args.recompute_stages)))
        return
    from gasnas.config import SearchConfig

    stages = SearchConfig().recompute_stages if args.recompute_stages is None else args.recompute_stages
    print(f"fast: search.recompute_stages={stages}; {torch.get_num_threads()} threads, torch {torch.__version__}")
    chk = check_equal(2, size, stages)
    print(f"max |fast - naive| output difference: {chk['eval_fp32']:.2e} (eval, fp32), "
          f"{chk['train_fp64']:.2e} (train, fp64); gradients (fp64, max |Δ| / max |g|): "
          f"α+GGM {chk['grad_arch_rel']:.1e}, weights {chk['grad_weights_rel']:.1e}")
    if max(chk["eval_fp32"], chk["train_fp64"]) > 1e-5 or max(chk["grad_arch_rel"], chk["grad_weights_rel"]) > 1e-9:
        sys.exit("fast and naive supernets disagree")
    runs: dict[str, list[dict]] = {"naive": [], "fast": []}
    for rnd in range(args.rounds):  # alternate the variants: slow phases of a shared machine hit both
        for variant in ("naive", "fast"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                                  "--batch", str(args.batch), "--size", args.size,
                                  "--recompute-stages", str(stages)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[variant].append(r)
            print(f"round {rnd + 1} {variant:6s} {r['images_per_s']:6.2f} img/s  {r['s_per_step']:6.2f} s/step  "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    # throughput: each variant's best round; peak memory: each variant's worst round
    results = {v: {"images_per_s": max(r["images_per_s"] for r in rs), "s_per_step": min(r["s_per_step"] for r in rs),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "rounds": rs} for v, rs in runs.items()}
    for v, r in results.items():
        print(f"{v:6s} best {r['images_per_s']:6.2f} img/s  {r['s_per_step']:6.2f} s/step  peak RSS {r['peak_rss_mb']:7.0f} MB")
    speed = results["fast"]["images_per_s"] / results["naive"]["images_per_s"]
    mem = results["fast"]["peak_rss_mb"] / results["naive"]["peak_rss_mb"]
    summary = {"max_output_diff": chk["eval_fp32"], "max_output_diff_train_fp64": chk["train_fp64"],
               "max_grad_rel_diff_arch_fp64": chk["grad_arch_rel"], "max_grad_rel_diff_weights_fp64": chk["grad_weights_rel"],
               "throughput_ratio": speed, "peak_memory_ratio": mem, "recompute_stages": stages,
               "threads": torch.get_num_threads(), "torch": torch.__version__, **results}
    print(f"throughput x{speed:.2f}, peak memory x{mem:.2f} (goal: >= 2x, <= 0.6x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
