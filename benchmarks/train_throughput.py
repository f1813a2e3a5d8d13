"""Training throughput: images per second of one training step, a derived net beside LR-ASPP.

A recipe's CPU budget is its epochs × its training images ÷ this throughput. Both networks are
built as `gasnas train` builds them (the recipe's memory format, optimizer and loss, batch size
and crop), and trained on random batches in alternating rounds in this one process (each round
`--steps` steps of each net, after `--warmup` untimed steps), so the ratio does not depend on
the machine's speed phase. Data loading is not timed (its workers overlap the step).

    python benchmarks/train_throughput.py --config camvid --genotype GENOTYPE.json [--lock FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from gasnas.fileio import exclusive_lock


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="camvid")
    ap.add_argument("--genotype", "-g", required=True, help="genotype.json, or a shipped genotype's name")
    ap.add_argument("--peer", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per net per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per net first (compilation included)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the derived net under torch.compile (train.compile), a third net")
    ap.add_argument("--n-train", type=int, default=None,
                    help="training images per epoch for the budget (default: the split's size)")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here too")
    ap.add_argument("--lock", default=None, help="flock file taken exclusively while timing")
    args = ap.parse_args(argv)

    import torch

    from gasnas.config import load_config
    from gasnas.engine.losses import build_criterion
    from gasnas.engine.train import genotype_for_training, make_optimizer
    from gasnas.models import build_peer
    from gasnas.space.derived import DerivedNet
    from gasnas.space.genotype import Genotype

    cfg = load_config(args.config, args.overrides)
    tc, h, w = cfg.train, *cfg.data.crop_size
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if tc.channels_last else torch.contiguous_format
    nets = {"gasnas": DerivedNet(genotype_for_training(Genotype.load(args.genotype), cfg)),
            args.peer: build_peer(args.peer, cfg.data.num_classes)}
    criterion = build_criterion(cfg.data.ignore_index, True, tc.ohem_thresh, tc.ohem_min_kept)
    images = torch.randn(tc.batch_size, 3, h, w).contiguous(memory_format=fmt)
    labels = torch.randint(0, cfg.data.num_classes, (tc.batch_size, h, w))

    def stepper(net: torch.nn.Module, forward: torch.nn.Module | None = None):
        net.to(memory_format=fmt).train()
        opt = make_optimizer(net, tc)
        forward = net if forward is None else forward

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            criterion(forward(images), labels, None).backward()
            opt.step()
        return step

    steps = {name: stepper(net) for name, net in nets.items()}
    if args.compile:
        import copy

        compiled = copy.deepcopy(nets["gasnas"])
        steps["gasnas+compile"] = stepper(compiled, torch.compile(compiled))
    per_round: dict[str, list[float]] = {name: [] for name in steps}
    with exclusive_lock(args.lock):
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        for _ in range(args.rounds):
            for name, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                per_round[name].append(args.steps * tc.batch_size / (time.perf_counter() - t0))

    n_train = args.n_train
    if n_train is None:
        from gasnas.data import build_dataset

        n_train = len(build_dataset(cfg.data, cfg.data.train_split, train=False))
    report = {"config": args.config, "genotype": str(args.genotype), "peer": args.peer, "threads": args.threads,
              "batch_size": tc.batch_size, "crop": [h, w], "epochs": tc.epochs, "train_images": n_train,
              "images_per_s": {name: statistics.median(v) for name, v in per_round.items()},
              "round_images_per_s": per_round}
    ips = report["images_per_s"]
    report["ratio_gasnas_to_peer"] = ips["gasnas"] / ips[args.peer]
    report["schedule_minutes"] = {name: tc.epochs * n_train / v / 60 for name, v in ips.items()}
    print(f"{args.config}: batch {tc.batch_size} at {h}x{w}, {args.threads} threads, median of {args.rounds} rounds")
    for name, v in ips.items():
        print(f"  {name:28s} {v:6.2f} images/s   {tc.epochs} epochs x {n_train} images: "
              f"{report['schedule_minutes'][name]:.0f} min of training steps")
    print(f"  gasnas / {args.peer}: x{report['ratio_gasnas_to_peer']:.2f} throughput")
    if args.compile:
        report["compile_speedup"] = ips["gasnas+compile"] / ips["gasnas"]
        print(f"  torch.compile / eager: x{report['compile_speedup']:.2f} throughput")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
