"""Supernet search-step speed: the fast supernet vs a plain DARTS-style mixed op, same run.

One search step = a weights step (forward + backward + SGD) and an α step (forward + backward +
Adam) at batch 8, 184x240, default space. Naive: plain DARTS mixed op (NCHW, one autograd node
per conv/BN/ReLU/product, every op including `none` as DARTS' x.mul(0.), a full backward in both
steps). Fast: the supernet as search runs it
(`Supernet(fast=True)`: one memory-lean autograd Function per mixed op, channels-last; see
space/fused.py), stepped like engine/search.py `weight_step` and engine/architect.py
`Architect.step`: the weights step freezes α and the GGM (no α gradients), the α step freezes
the weights (no weight gradients). Both variants hold the same parameters; their outputs are
compared first (must agree to 1e-5) and so are their gradients (α, GGM, weights; fp64, train
mode).
Both variants pad 184x240 inputs to 192x256 inside (`space.pad_to_stride`, the default).

Throughput: a shared CPU can run in speed phases (for seconds to minutes everything is ~1.4x slower),
so variants timed in separate processes, or minutes apart, are not comparable. Both variants are
built in one subprocess and timed step by step, alternately, for `--pairs` pairs (the order
flips every pair); the throughput ratio is the median over pairs of t_naive / t_fast, and each
variant's img/s is batch / its median step time. Peak memory: the peak RSS (VmHWM; CPU has no
allocator statistics) of a fresh subprocess per variant running a warm-up step and `--steps`
steps, same process setup for both (`--rounds` such pairs of processes; the worst is kept).

    python benchmarks/supernet_step.py [--pairs 10] [--steps 2] [--rounds 1] [--batch 8]
        [--size 184x240] [--recompute-stages N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gasnas.engine.architect import frozen


def make(fast: bool, seed: int = 0, recompute_stages: int | None = None, darts_none: bool = True,
         device: str = "cpu"):
    """The fast supernet, or the naive one; `darts_none`: the naive mixed op also computes the
    `none` op and adds its weighted zeros, as DARTS' MixedOp does (`sum(w * op(x) for ...)`
    over every op, `none` being `x.mul(0.)`): skipping `none` is one of the fast path's
    techniques the issue lists, not part of the baseline."""
    from gasnas.config import SearchConfig, SpaceConfig
    from gasnas.space import Supernet
    from gasnas.space.cell import MixedOp

    if recompute_stages is None:
        recompute_stages = SearchConfig().recompute_stages
    torch.manual_seed(seed)
    net = Supernet(SpaceConfig(), 11, fast=fast, recompute_stages=recompute_stages)
    if not fast and darts_none:
        for m in net.modules():
            if isinstance(m, MixedOp):
                m.forward = darts_mixed_forward.__get__(m)
    return net.to(device)


def darts_mixed_forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """DARTS' MixedOp.forward (model_search.py) over gasnas' ops: every op, `none` included
    (DARTS' Zero: x.mul(0.), strided on reduction edges)."""
    from gasnas.space.ops import OPS

    ops = iter(self.ops)
    terms = []
    for name in self.op_names:
        if OPS[name].free:
            y = x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)
        else:
            y = next(ops)(x)
        terms.append(y)
    return sum(w * y for w, y in zip(weights, terms))


def stepper(fast: bool, batch: int, size: list[int], recompute_stages: int | None,
            darts_none: bool = True, device: str = "cpu") -> Callable[[], None]:
    """One search step of a variant, on fixed data: as the engine steps it (fast) or DARTS-style
    (naive)."""
    net = make(fast, recompute_stages=recompute_stages, darts_none=darts_none, device=device)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, *size, generator=g).to(device)
    y = torch.randint(0, 11, (batch, *size), generator=g).to(device)
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
        if device.startswith("cuda"):  # the step's kernels finish before the clock stops
            torch.cuda.synchronize(device)

    return step


def run_memory(fast: bool, steps: int, batch: int, size: list[int], recompute_stages: int | None,
               darts_none: bool = True, device: str = "cpu") -> dict:
    """Peak memory of this (fresh) process over a warm-up step and `steps` steps of one variant:
    RSS on CPU, torch.cuda.max_memory_allocated on CUDA."""
    step = stepper(fast, batch, size, recompute_stages, darts_none, device)
    for _ in range(steps + 1):
        step()
    if device.startswith("cuda"):
        return {"fast": fast, "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"fast": fast, "peak_mb": peak_rss_mb()}


def run_paired(pairs: int, batch: int, size: list[int], recompute_stages: int | None,
               darts_none: bool = True, device: str = "cpu") -> dict:
    """Both variants in this process, timed step by step, alternately (naive, fast), (fast,
    naive), ...: a pair's two steps run within seconds of each other, in the same speed phase."""
    steps = {"naive": stepper(False, batch, size, None, darts_none, device),
             "fast": stepper(True, batch, size, recompute_stages, device=device)}
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {"naive": [], "fast": []}
    for i in range(pairs):
        for v in (("naive", "fast") if i % 2 == 0 else ("fast", "naive")):
            t0 = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t0)
    return times


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


def check_equal(batch: int, size: list[int], recompute_stages: int | None, darts_none: bool = True,
                device: str = "cpu") -> dict[str, float]:
    """Max |Δoutput| in eval mode (fp32) and in train mode (fp64: in fp32, batch-statistics
    BatchNorm amplifies rounding-order differences over 14 cells to ~1e-4 relative), and the
    max relative gradient difference (max |Δg| / max |g|) of α + GGM and of the weights, fp64,
    train mode, gradients of the cross-entropy."""
    fast = make(True, recompute_stages=recompute_stages, device=device)
    ref = make(False, darts_none=darts_none, device=device)
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, *size, generator=g).to(device)
    y = torch.randint(0, 11, (batch, *size), generator=g).to(device)
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


def child(args: argparse.Namespace, mode: str) -> dict:
    """Run `mode` (naive, fast: peak RSS; paired: timing) in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--pairs", str(args.pairs),
           "--batch", str(args.batch), "--size", args.size, "--recompute-stages", str(args.recompute_stages)]
    cmd += ["--naive-skips-none"] if args.naive_skips_none else []
    cmd += ["--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10, help="timed (naive, fast) step pairs")
    ap.add_argument("--steps", type=int, default=2, help="steps per peak-memory run (after a warm-up step)")
    ap.add_argument("--rounds", type=int, default=1, help="peak-memory subprocesses per variant")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="184x240")
    ap.add_argument("--json", default=None)
    ap.add_argument("--recompute-stages", type=int, default=None,
                    help="fast variant: search.recompute_stages (default: the config default)")
    ap.add_argument("--naive-skips-none", action="store_true",
                    help="naive variant: skip the `none` op (the earlier baseline) instead of computing "
                         "its weighted zeros as DARTS does")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (CUDA: peak memory is "
                    "torch.cuda.max_memory_allocated, not RSS)")
    ap.add_argument("--child", choices=["fast", "naive", "paired"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = [int(v) for v in args.size.split("x")]
    if args.child == "paired":
        print(json.dumps(run_paired(args.pairs, args.batch, size, args.recompute_stages, not args.naive_skips_none,
                                    args.device)))
        return
    if args.child:
        print(json.dumps(run_memory(args.child == "fast", args.steps, args.batch, size, args.recompute_stages,
                                    not args.naive_skips_none, args.device)))
        return
    from gasnas.config import SearchConfig
    from gasnas.deploy.bench import check_options
    from gasnas.errors import GasnasError

    try:  # the same --device check as `gasnas bench`
        check_options(["torch"], args.device, "fp32")
    except GasnasError as exc:
        print(f"supernet_step: {exc}", file=sys.stderr)
        sys.exit(2)
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(args.device) if cuda else f"{torch.get_num_threads()} threads"
    memory = "peak CUDA allocated" if cuda else "peak RSS"
    if args.recompute_stages is None:
        args.recompute_stages = SearchConfig().recompute_stages
    print(f"fast: search.recompute_stages={args.recompute_stages}; {args.device}, {where}, "
          f"torch {torch.__version__}; batch {args.batch}, {args.size}; naive: DARTS mixed op "
          f"{'without' if args.naive_skips_none else 'with'} the `none` op")
    chk = check_equal(2, size, args.recompute_stages, not args.naive_skips_none, args.device)
    print(f"max |fast - naive| output difference: {chk['eval_fp32']:.2e} (eval, fp32), "
          f"{chk['train_fp64']:.2e} (train, fp64); gradients (fp64, max |Δ| / max |g|): "
          f"α+GGM {chk['grad_arch_rel']:.1e}, weights {chk['grad_weights_rel']:.1e}")
    if max(chk["eval_fp32"], chk["train_fp64"]) > 1e-5 or max(chk["grad_arch_rel"], chk["grad_weights_rel"]) > 1e-9:
        sys.exit("fast and naive supernets disagree")
    mem: dict[str, list[float]] = {"naive": [], "fast": []}
    for _ in range(args.rounds):
        for v in ("naive", "fast"):
            mem[v].append(child(args, v)["peak_mb"])
    times = child(args, "paired")
    ratios = sorted(tn / tf for tn, tf in zip(times["naive"], times["fast"]))
    speed = statistics.median(ratios)
    results = {v: {"s_per_step": statistics.median(times[v]), "images_per_s": args.batch / statistics.median(times[v]),
                   "peak_mb": max(mem[v]), "step_times": times[v], "peak_rounds": mem[v]} for v in mem}
    for v, r in results.items():
        print(f"{v:6s} {r['images_per_s']:6.2f} img/s  {r['s_per_step']:6.3f} s/step (median of {args.pairs}; "
              f"min {min(times[v]):.3f}, max {max(times[v]):.3f})  {memory} {r['peak_mb']:7.0f} MB "
              f"(rounds: {', '.join(f'{m:.0f}' for m in mem[v])})")
    mem_ratio = results["fast"]["peak_mb"] / results["naive"]["peak_mb"]
    print(f"per-pair throughput ratios: min x{ratios[0]:.2f}, median x{speed:.2f}, max x{ratios[-1]:.2f}")
    print(f"throughput x{speed:.2f} (median per-pair), peak memory x{mem_ratio:.2f} (goal: >= 2x, <= 0.6x): "
          f"{'met' if speed >= 2 and mem_ratio <= 0.6 else 'not met'}")
    if args.json:
        summary = {"max_output_diff": chk["eval_fp32"], "max_output_diff_train_fp64": chk["train_fp64"],
                   "max_grad_rel_diff_arch_fp64": chk["grad_arch_rel"],
                   "max_grad_rel_diff_weights_fp64": chk["grad_weights_rel"], "throughput_ratio": speed,
                   "pair_ratios": ratios, "peak_memory_ratio": mem_ratio, "recompute_stages": args.recompute_stages,
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
                   "device_name": where if cuda else None, "memory": memory, **results}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
