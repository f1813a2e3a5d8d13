"""How well does the latency predictor rank and size real networks? build → calibrate → validate.

    flock -x /tmp/gasnas-cpu.lock .venv/bin/python benchmarks/latency_predictor.py \
        --input 360x480 --threads 2 --samples 50 --calibrate 16 --out runs/latency_predictor

1. builds the latency table for the space (default: `Config()`'s) at --input,
2. samples --calibrate derived nets (seed 1000) and --samples *other* nets (seed 0) spanning the
   space's latency range, measures them all in --rounds passes (shuffled, interleaved), fits the
   calibration on the first group only, and validates on the second (the default; with
   --separate the calibration is measured and fitted first, `gasnas latency calibrate`-style,
   and validation follows with the stored calibration),
3. prints Spearman ρ / Pearson r / MAPE for the calibrated predictor and the raw table sum, the
   noise floor (the same nets re-measured), the slowest/fastest ratio, other processes' CPU
   load while measuring, and the wall times; writes lut.json, validate.json, validate.png and
   summary.json under --out.

Not a test: numbers depend on the machine and on how quiet it is (run it under the exclusive
lock on a shared machine; --wait-quiet waits for other processes to settle).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="recipe or YAML (default: the default space)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--input", default="360x480")
    p.add_argument("--threads", type=int, default=None, help="default: torch's (all cores)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=50, help="validation nets")
    p.add_argument("--calibrate", type=int, default=16, help="calibration nets (0: raw table sum only)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--wait-quiet", type=float, default=15.0, metavar="SECONDS",
                   help="wait up to this long per timing for other processes to go quiet (0: never)")
    p.add_argument("--separate", action="store_true",
                   help="calibrate in a separate step before validating (the `latency build` path)")
    p.add_argument("--lut", default=None, help="reuse this table instead of building one")
    p.add_argument("--out", default="runs/latency_predictor")
    args = p.parse_args(argv)

    from gasnas.config import load_config, parse_size
    from gasnas.latency.calibrate import calibrate
    from gasnas.latency.contention import Quiet, busy_threshold
    from gasnas.latency.lut import LatencyTable
    from gasnas.latency.measure import build_lut
    from gasnas.latency.validate import validate

    cfg = load_config(args.config, args.overrides)
    lat = dataclasses.replace(cfg.latency, input_size=parse_size(args.input), threads=args.threads,
                              backend=args.backend, device=args.device)
    out = Path(args.out)
    num_classes = cfg.data.num_classes

    def quiet() -> Quiet:
        return Quiet(threshold=busy_threshold(lat.threads), max_wait_s=args.wait_quiet, retries=2,
                     total_wait_s=6 * args.wait_quiet)

    t_all = time.perf_counter()
    t0 = time.perf_counter()
    if args.lut:
        table = LatencyTable.load(args.lut)
        build_s = None
    else:
        q = quiet()
        table = build_lut(cfg.space, num_classes, lat, progress=True, rounds=args.rounds, quiet=q)
        build_s = time.perf_counter() - t0
        print(f"build: {len(table)} entries in {build_s:.1f}s  (others' load {q.summary()})", flush=True)
    table.save(out / "lut.json")

    calib_s = None
    if args.separate and args.calibrate > 0:
        t0 = time.perf_counter()
        rec = calibrate(table, cfg.space, num_classes, lat, samples=args.calibrate, rounds=args.rounds,
                        progress=True, quiet=quiet())
        calib_s = time.perf_counter() - t0
        table.save()
        print(f"calibrate: {args.calibrate} nets in {calib_s:.1f}s, fit MAPE {rec['fit_mape_pct']:.1f}% "
              f"(raw {rec['raw_mape_pct']:.1f}%)", flush=True)
    report = validate(table, cfg.space, num_classes, lat, samples=args.samples, rounds=args.rounds,
                      out_dir=out, progress=True, quiet=quiet(),
                      calibrate_samples=0 if args.separate else args.calibrate)
    table.save()
    wall = time.perf_counter() - t_all

    m, raw, nf = report["metrics"], report["raw_metrics"], report["noise_floor"] or {}
    summary = {
        "command": " ".join([sys.executable, *sys.argv]),
        "device_name": table.env.get("device_name"),
        "threads": table.env.get("threads"),
        "backend": table.env.get("backend"),
        "allocator": table.env.get("allocator"),
        "input_size": lat.input_size,
        "entries": len(table),
        "lut_build_s": build_s,
        "calibration": report["calibration"],
        "separate_calibration_s": calib_s,
        "samples": report["samples"],
        "calibrated": m,
        "raw_table_sum": raw,
        "noise_floor": nf,
        "slowest_fastest_ratio": report["slowest_fastest_ratio"],
        "measured_range_ms": report["measured_range_ms"],
        "contention": report["contention"],
        "validate_s": report["wall_s"],
        "wall_s": wall,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{table.env.get('device_name')}, {table.env.get('threads')} threads, {lat.backend}, "
          f"{lat.input_size[0]}x{lat.input_size[1]}, {report['samples']} validation nets "
          f"({report['measured_range_ms'][0]:.1f}-{report['measured_range_ms'][1]:.1f} ms, "
          f"slowest/fastest {report['slowest_fastest_ratio']:.2f}x)")
    print(f"  calibrated predictor: spearman {m['spearman']:.3f}  pearson {m['pearson']:.3f}  "
          f"MAPE {m['mape_pct']:.1f}%  max APE {m['max_ape_pct']:.1f}%")
    print(f"  raw table sum:        spearman {raw['spearman']:.3f}  pearson {raw['pearson']:.3f}  "
          f"MAPE {raw['mape_pct']:.1f}%  max APE {raw['max_ape_pct']:.1f}%")
    if nf:
        print(f"  noise floor (re-measured): MAPE {nf['remeasure_mape_pct']:.1f}%  "
              f"spearman {nf['remeasure_spearman']:.3f}")
    c = report["contention"]
    print(f"  others' CPU load while measuring: {c.get('foreign_cpu_cores_mean')} cores, "
          f"{c.get('still_disturbed')} of {c.get('measurements')} timings disturbed, waited {c.get('waited_s')}s")
    print(f"  LUT build {build_s if build_s is None else round(build_s, 1)}s, validate {report['wall_s']:.0f}s, "
          f"total {wall:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
