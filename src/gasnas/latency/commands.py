"""CLI for latency: `gasnas latency build | calibrate | validate` (heavy imports inside the handlers,
so `gasnas --help` does not load torch)."""

from __future__ import annotations

import argparse
from typing import Any

from gasnas.config import parse_size
from gasnas.errors import GasnasError


def _common(p: argparse.ArgumentParser) -> None:
    from gasnas.config import add_config_args

    add_config_args(p)
    p.add_argument("--space", dest="config", default=argparse.SUPPRESS, metavar="CONFIG",
                   help="alias of --config: the recipe whose space is measured")
    p.add_argument("--input", default=None, metavar="HxW",
                   help="input size, e.g. 360x480 (default: latency.input_size)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the head (default: data.num_classes)")
    p.add_argument("--allow-foreign-lut", action="store_true",
                   help="use a table measured on another device/threads/backend/dtype")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="on a shared machine: wait up to this long for other processes to go quiet "
                        "before a timing, and redo timings they disturbed (default 0: never wait)")
    p.add_argument("--rounds", type=int, default=2,
                   help="timing passes; each entry/net keeps its lowest median (default 2)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _env_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: latency.device)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: latency.threads)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default=None,
                   help="runtime to time with (default: latency.backend)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)


def register(sub: argparse._SubParsersAction) -> None:
    lat = sub.add_parser("latency", help="latency lookup table: build, calibrate, validate the predictor")
    lsub = lat.add_subparsers(dest="latency_command", metavar="ACTION", required=True)

    b = lsub.add_parser("build", help="time every op shape and fixed part a space needs into a LUT JSON")
    _common(b)
    _env_args(b)
    b.add_argument("--out", required=True, help="table JSON; an existing table is extended")
    b.add_argument("--fresh", action="store_true", help="start a new table even if --out exists")
    b.add_argument("--calibrate", type=int, default=16, metavar="N",
                   help="fit the whole-network correction on N measured derived nets (0: skip; default 16)")
    b.set_defaults(func=_build)

    c = lsub.add_parser("calibrate", help="(re)fit a LUT's whole-network correction for a space")
    _common(c)
    c.add_argument("--lut", required=True, help="table JSON (updated in place)")
    c.add_argument("--samples", type=int, default=16, help="derived nets to fit on (default 16)")
    c.set_defaults(func=_calibrate)

    v = lsub.add_parser("validate", help="predicted vs measured latency of sampled derived nets")
    _common(v)
    _env_args(v)
    v.add_argument("--lut", required=True, help="table JSON")
    v.add_argument("--samples", type=int, default=50, help="derived nets to measure (default 50)")
    v.add_argument("--seed", type=int, default=0, help="sampling seed (calibration uses 1000)")
    v.add_argument("--out", default=None, metavar="DIR",
                   help="where validate.json and validate.png go (default: next to the LUT)")
    v.add_argument("--recalibrate", type=int, default=0, metavar="N",
                   help="first refit the LUT's calibration on N other nets, measured in the same "
                        "passes as the validation nets, and save it into the LUT (default 0: use "
                        "the stored calibration)")
    v.set_defaults(func=_validate)


# --------------------------------------------------------------------------- handlers


def _setup(args: argparse.Namespace, table_env: dict[str, Any] | None = None):
    """Config, LatencyConfig (CLI over table env over recipe), input size, classes."""
    import dataclasses

    from gasnas.config import load_config

    cfg = load_config(getattr(args, "config", None), args.overrides)
    lat = cfg.latency
    changes: dict[str, Any] = {}
    if table_env is not None:  # time like the table was timed, unless told otherwise
        for name in ("device", "backend", "dtype", "threads"):
            if name in table_env and table_env[name] is not None:
                changes[name] = table_env[name]
    for name in ("device", "backend", "dtype", "threads"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if args.input is not None:
        changes["input_size"] = parse_size(args.input)
    if args.allow_foreign_lut:
        changes["allow_foreign_lut"] = True
    lat = dataclasses.replace(lat, **changes)
    if lat.threads is not None and lat.threads < 1:
        raise GasnasError(f"--threads {lat.threads}: must be >= 1")
    num_classes = args.num_classes if args.num_classes is not None else cfg.data.num_classes
    if num_classes < 1:
        raise GasnasError(f"--num-classes {num_classes}: must be >= 1")
    return cfg, lat, num_classes


def _quiet(args: argparse.Namespace, threads: int | None):
    from gasnas.latency.contention import Quiet, busy_threshold

    if args.wait_quiet > 0:
        return Quiet(threshold=busy_threshold(threads), max_wait_s=args.wait_quiet, retries=3,
                     total_wait_s=10 * args.wait_quiet)
    return Quiet(threshold=busy_threshold(threads), max_wait_s=0.0, retries=0)


def _warn_load(summary: dict[str, Any], what: str) -> None:
    load = summary.get("foreign_cpu_cores_mean")
    if load is not None and load >= summary.get("threshold_cores", 0.2):
        print(f"warning: other processes used {load:.2f} CPU cores on average while {what}; "
              f"timings may be inflated (try --wait-quiet 60 on a shared machine)")


def _build(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from gasnas.latency.calibrate import calibrate
    from gasnas.latency.lut import LatencyTable, current_environment
    from gasnas.latency.measure import build_lut
    from gasnas.latency.timing import check_device

    cfg, lat, num_classes = _setup(args)
    check_device(lat.device)
    out = Path(args.out)
    base = None
    if out.exists() and not args.fresh:
        base = LatencyTable.load(out)
        base.check_environment(current_environment(lat), lat.allow_foreign_lut)
    t0 = time.perf_counter()
    quiet = _quiet(args, lat.threads)
    before = len(base) if base is not None else 0
    table = build_lut(cfg.space, num_classes, lat, progress=args.progress, base=base,
                      rounds=args.rounds, quiet=quiet)
    table.save(out)
    print(f"latency table: {len(table) - before} entries measured ({len(table)} in all) in "
          f"{time.perf_counter() - t0:.1f}s at {lat.input_size[0]}x{lat.input_size[1]} on "
          f"{table.env.get('device_name')} ({table.env.get('backend')}, {table.env.get('threads')} threads) -> {out}")
    _warn_load(quiet.summary(), "building the table")
    if args.calibrate > 0:
        t1 = time.perf_counter()
        cq = _quiet(args, lat.threads)
        rec = calibrate(table, cfg.space, num_classes, lat, samples=args.calibrate,
                        rounds=args.rounds, progress=args.progress, quiet=cq)
        table.save(out)
        _print_calibration(rec, time.perf_counter() - t1)
        _warn_load(cq.summary(), "calibrating")
    return 0


def _print_calibration(rec: dict[str, Any], seconds: float) -> None:
    scales = ", ".join(f"{s:.3f}" for s in rec["stage_scale"])
    print(f"calibration on {len(rec['fitted_on'])} measured nets in {seconds:.1f}s: stage scales "
          f"[{scales}], offset {rec['offset_ms']:+.2f} ms; fit MAPE {rec['fit_mape_pct']:.1f}% "
          f"(raw table sum {rec['raw_mape_pct']:.1f}%)")


def _calibrate(args: argparse.Namespace) -> int:
    import time

    from gasnas.latency.calibrate import calibrate
    from gasnas.latency.lut import LatencyTable

    table = LatencyTable.load(args.lut)
    cfg, lat, num_classes = _setup(args, table.env)
    t0 = time.perf_counter()
    quiet = _quiet(args, lat.threads)
    rec = calibrate(table, cfg.space, num_classes, lat, samples=args.samples, rounds=args.rounds,
                    progress=args.progress, quiet=quiet)
    table.save()
    _print_calibration(rec, time.perf_counter() - t0)
    _warn_load(quiet.summary(), "calibrating")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gasnas.latency.lut import LatencyTable
    from gasnas.latency.validate import validate

    table = LatencyTable.load(args.lut)
    cfg, lat, num_classes = _setup(args, table.env)
    if args.samples < 2:
        raise GasnasError(f"--samples {args.samples}: need at least 2 nets to correlate")
    lut_path = Path(args.lut)
    out = Path(args.out) if args.out else lut_path.with_name(lut_path.stem + "_validate")
    quiet = _quiet(args, lat.threads)
    report = validate(table, cfg.space, num_classes, lat, samples=args.samples, seed=args.seed,
                      rounds=args.rounds, out_dir=out, progress=args.progress, quiet=quiet,
                      calibrate_samples=args.recalibrate)
    if args.recalibrate > 0:
        table.save()
    m, raw, nf = report["metrics"], report["raw_metrics"], report["noise_floor"]
    label = "calibrated" if report["calibrated"] else "uncalibrated"
    print(f"{report['samples']} derived nets, {report['measured_range_ms'][0]:.1f}-"
          f"{report['measured_range_ms'][1]:.1f} ms measured (slowest/fastest "
          f"{report['slowest_fastest_ratio']:.2f}x)")
    print(f"predictor ({label}): spearman {m['spearman']:.3f}  pearson {m['pearson']:.3f}  "
          f"MAPE {m['mape_pct']:.1f}%  (max {m['max_ape_pct']:.1f}%)")
    print(f"raw table sum:        spearman {raw['spearman']:.3f}  pearson {raw['pearson']:.3f}  "
          f"MAPE {raw['mape_pct']:.1f}%")
    if nf is not None:
        print(f"noise floor (same nets re-measured): MAPE {nf['remeasure_mape_pct']:.1f}%  "
              f"spearman {nf['remeasure_spearman']:.3f}")
    print(f"report: {out / 'validate.json'}  plot: {out / 'validate.png'}  ({report['wall_s']:.0f}s)")
    _warn_load(report["contention"], "measuring")
    return 0
