"""Supernet search-step speed: the fast supernet vs a plain DARTS-style mixed op, same run.

One search step = a weights step (forward + backward + SGD) and an α step (forward + backward +
Adam) at batch 8, 184x240, default space. Naive: plain DARTS mixed op (NCHW, a full backward in
both steps). Fast: fused separable branches, channels-last, and an α step that asks autograd for
the α/GGM gradients only (no weight gradients are computed there). Both variants hold the same parameters; their outputs
are compared first (must agree to 1e-5). Throughput is images/s over timed steps; peak memory is
the peak RSS of a fresh subprocess per variant (CPU has no allocator statistics).

    python benchmarks/supernet_step.py [--steps 3] [--batch 8] [--size 184x240] [--json out.json]
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


def make(fast: bool, seed: int = 0):
    from gasnas.config import SpaceConfig
    from gasnas.space import Supernet

    torch.manual_seed(seed)
    return Supernet(SpaceConfig(), 11, fast=fast)


def run_variant(fast: bool, steps: int, batch: int, size: list[int]) -> dict:
    """Time `steps` search steps (after one warm-up step); report images/s and peak RSS."""
    net = make(fast)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, *size, generator=g)
    y = torch.randint(0, 11, (batch, *size), generator=g)

    arch = net.arch_parameters()

    def step() -> None:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        w_opt.step()
        net.zero_grad(set_to_none=True)
        if fast:  # the α step needs no weight gradients: ask autograd for α (+GGM) only
            grads = torch.autograd.grad(F.cross_entropy(net(x), y), arch)
            for p, g_ in zip(arch, grads):
                p.grad = g_
        else:  # DARTS-style: a full backward, then step only the α optimizer
            F.cross_entropy(net(x), y).backward()
        a_opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"fast": fast, "images_per_s": batch * steps / dt, "s_per_step": dt / steps, "peak_rss_mb": peak_mb}


def check_equal(batch: int, size: list[int]) -> tuple[float, float]:
    """Max |Δoutput| in eval mode (fp32) and in train mode (fp64: in fp32, batch-statistics
    BatchNorm amplifies rounding-order differences over 14 cells to ~1e-4 relative)."""
    fast, ref = make(True), make(False)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        eval_diff = float((fast.eval()(x) - ref.eval()(x)).abs().max())
        fast, ref, x = fast.double().train(), ref.double().train(), x.double()
        train_diff = float((fast(x) - ref(x)).abs().max())
    return eval_diff, train_diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="184x240")
    ap.add_argument("--json", default=None)
    ap.add_argument("--variant", choices=["fast", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = [int(v) for v in args.size.split("x")]
    if args.variant:  # child process: one variant, fresh RSS
        print(json.dumps(run_variant(args.variant == "fast", args.steps, args.batch, size)))
        return
    diff, diff64 = check_equal(2, size)
    print(f"max |fast - naive| output difference: {diff:.2e} (eval, fp32), {diff64:.2e} (train, fp64)")
    results = {}
    for variant in ("naive", "fast"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                              "--batch", str(args.batch), "--size", args.size],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:6s} {r['images_per_s']:6.2f} img/s  {r['s_per_step']:6.2f} s/step  peak RSS {r['peak_rss_mb']:7.0f} MB")
    speed = results["fast"]["images_per_s"] / results["naive"]["images_per_s"]
    mem = results["fast"]["peak_rss_mb"] / results["naive"]["peak_rss_mb"]
    summary = {"max_output_diff": diff, "max_output_diff_train_fp64": diff64, "throughput_ratio": speed, "peak_memory_ratio": mem,
               "threads": torch.get_num_threads(), "torch": torch.__version__, **results}
    print(f"throughput x{speed:.2f}, peak memory x{mem:.2f} (goal: >= 2x, <= 0.6x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
