"""CLI: `gasnas search`, `gasnas train`, `gasnas eval` (heavy imports inside the handlers).

All three run under torchrun for data parallelism (see engine/distributed.py), e.g.
`torchrun --nproc-per-node 4 -m gasnas search --config cityscapes --set device=cuda`.
Ctrl-C (or SIGTERM) saves a checkpoint at the next step and exits 130 (143) with a line saying
where; `--resume RUN_DIR` continues from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gasnas.config import add_config_args


def _config(args: argparse.Namespace, resume_config: Path | None):
    """--config (+ --set); when resuming without --config, the run's own config.yaml."""
    from gasnas.config import load_config
    from gasnas.errors import GasnasError

    if args.config:
        return load_config(args.config, args.overrides)
    if resume_config is not None:
        if not resume_config.is_file():
            raise GasnasError(f"{resume_config}: not found (pass --config RECIPE)")
        return load_config(resume_config, args.overrides)
    raise GasnasError(f"gasnas {args.command}: --config RECIPE is required (e.g. --config demo)")


def _run_guarded(fn) -> int:
    from gasnas.engine import distributed as D
    from gasnas.engine.runtime import RunInterrupted

    try:
        fn()
        return 0
    except RunInterrupted as stop:
        if D.current().main:
            print(f"gasnas: {stop}; continue with --resume", file=sys.stderr)
        return stop.exit_code
    finally:
        D.shutdown()


def _search(args: argparse.Namespace) -> int:
    from gasnas.engine.search import run_search, with_target

    cfg = with_target(_config(args, Path(args.resume) / "config.yaml" if args.resume else None), args.target_ms)
    return _run_guarded(lambda: run_search(cfg, args.resume, ckpt_every_steps=args.ckpt_every_steps,
                                           show_progress=not args.no_progress))


def _train(args: argparse.Namespace) -> int:
    from gasnas.engine.train import run_train

    cfg = _config(args, Path(args.resume) / "config.yaml" if args.resume else None)
    return _run_guarded(lambda: run_train(cfg, args.genotype, args.resume, run_dir=args.run_dir,
                                          ckpt_every_steps=args.ckpt_every_steps,
                                          show_progress=not args.no_progress, peer=args.peer))


def _eval(args: argparse.Namespace) -> int:
    from gasnas.engine.evaluate import run_eval_command

    return run_eval_command(args)


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run from RUN_DIR's last checkpoint (its config.yaml "
                        "is used unless --config is given)")
    p.add_argument("--ckpt-every-steps", type=int, default=0, metavar="N",
                   help="also checkpoint every N steps (default: at each epoch end only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an architecture (supernet + GGM + latency) → genotype.json",
                       description="Bilevel first-order search; writes the run folder cfg.run_dir "
                                   "(genotype.json, metrics.jsonl, plots, checkpoints).")
    add_config_args(p)
    p.add_argument("--target-ms", type=float, default=None, metavar="T",
                   help="latency budget: hinge loss toward T ms, λ adapted between epochs from the "
                        "measured latency of the derived net")
    _run_options(p)
    p.set_defaults(func=_search)

    p = sub.add_parser("train", help="train a derived network from scratch → best.pt / last.pt",
                       description="Train the network of a genotype; writes cfg.run_dir/train.")
    p.add_argument("--genotype", "-g", default=None, help="genotype.json written by gasnas search")
    p.add_argument("--peer", default=None, metavar="NAME",
                   help="train a torchvision peer instead (lraspp_mobilenet_v3_large, ...; no pretrained "
                        "weights) with the same recipe: the baseline for benchmarks")
    add_config_args(p)
    p.add_argument("--run-dir", default=None, help="output folder (default: cfg.run_dir/train)")
    _run_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="mIoU (per-class IoU table) of a trained checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by gasnas train")
    add_config_args(p)
    p.add_argument("--split", default=None, help="dataset split (default: data.val_split)")
    p.add_argument("--flip", action="store_true", help="test-time horizontal flip")
    p.add_argument("--scales", default="1", help="test-time scales, e.g. 0.75,1,1.25 (default 1)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--save-preds", default=None, metavar="DIR", help="write colourised predictions here")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the metrics as JSON")
    p.set_defaults(func=_eval)
