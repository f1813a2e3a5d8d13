"""CLI for deployment: `gasnas bench`, `gasnas export`, `gasnas predict`.

Heavy imports (torch, onnx, torchvision) happen inside the handlers so `gasnas --help` is fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gasnas.config import add_config_args
from gasnas.errors import GasnasError


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--genotype", "-g", metavar="JSON", help="genotype JSON (random weights)")
    g.add_argument("--checkpoint", metavar="PT", help="trained checkpoint (genotype + weights + meta)")


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _bench(args: argparse.Namespace) -> int:
    from gasnas.config import load_config, parse_size
    from gasnas.deploy.bench import (
        BenchModel,
        check_options,
        markdown_table,
        run_bench,
        summary_lines,
    )
    from gasnas.fileio import write_json_atomic as write_json
    from gasnas.fileio import write_text_atomic as write_text
    from gasnas.models import PEERS, build_peer, complexity, load_network

    cfg = load_config(args.config, args.overrides).bench
    size = parse_size(args.input) if args.input else parse_size(cfg.input_size, "bench.input_size")
    backends = _split(args.backend) or [cfg.backend]
    backends = list(dict.fromkeys(backends))  # a backend named twice is one column
    device = args.device or cfg.device
    dtype = args.dtype or cfg.dtype
    threads = args.threads if args.threads is not None else cfg.threads
    runs = args.runs if args.runs is not None else cfg.runs
    warmup = args.warmup if args.warmup is not None else cfg.warmup
    if threads is not None and threads < 1:
        raise GasnasError(f"--threads {threads}: must be >= 1")
    if runs < 1:
        raise GasnasError(f"--runs {runs}: must be >= 1")
    if warmup < 0:
        raise GasnasError(f"--warmup {warmup}: must be >= 0")
    check_options(backends, device, dtype)

    model, _, source = load_network(args.genotype, args.checkpoint)
    params, flops = complexity(model, size)
    models = [BenchModel("gasnas", model, params, flops, source, reference=True)]
    if args.baselines:
        for name in PEERS:
            peer = build_peer(name, model.num_classes)
            p, f = complexity(peer, size)
            models.append(BenchModel(name, peer, p, f, f"torchvision.models.segmentation.{name}"))
    report = run_bench(models, size, backends, device, dtype, threads, warmup, runs, progress=True)
    text = "\n".join(summary_lines(report)) + "\n\n" + markdown_table(report)
    print(text, end="")
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.markdown:
        write_text(args.markdown, text)
        print(f"wrote {args.markdown}")
    if not any(r["status"] == "ok" for m in report["models"] for r in m["results"].values()):
        raise GasnasError("nothing could be timed: every backend is unavailable here (see the table)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from gasnas.config import parse_size
    from gasnas.deploy.export import ParityError, export_onnx
    from gasnas.deploy.predict import collect_images
    from gasnas.models import load_network

    out = Path(args.onnx)
    if out.is_dir():
        raise GasnasError(f"--onnx {out}: is a folder; give a file name such as model.onnx")
    size = parse_size(args.input)
    images = [p for p, _ in collect_images(args.images)] if args.images else None
    if not 0 < args.min_agreement <= 1 or args.atol < 0:
        raise GasnasError("--atol must be >= 0 and --min-agreement in (0, 1]")
    model, meta, source = load_network(args.genotype, args.checkpoint)
    print(f"exporting {source} at 1x3x{size[0]}x{size[1]}" + (" (dynamic batch/H/W)" if args.dynamic else ""))
    try:
        report = export_onnx(model, out, size, args.dynamic, images, meta, args.atol, args.min_agreement)
    except ParityError as exc:
        print("\n".join(exc.report.lines()))
        raise
    print("onnx.checker: ok")
    print("\n".join(report.lines()))
    print(f"wrote {out} ({report.onnx_bytes / 1e6:.2f} MB)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from gasnas.deploy.bench import check_options
    from gasnas.deploy.predict import predict_images
    from gasnas.models import load_network

    check_options(["torch"], args.device, "fp32")
    if not 0.0 <= args.alpha <= 1.0:
        raise GasnasError(f"--alpha {args.alpha}: must be between 0 and 1")
    model, meta, _ = load_network(checkpoint=args.checkpoint)
    summary = predict_images(model, meta, args.images, args.out, args.overlay, args.device,
                             args.alpha)
    n_ok = len(summary.written) // (2 if args.overlay else 1)
    print(f"wrote {len(summary.written)} file(s) for {n_ok} image(s) to {args.out}")
    if summary.failed:
        names = ", ".join(str(p) for p, _ in summary.failed[:3])
        more = f" and {len(summary.failed) - 3} more" if len(summary.failed) > 3 else ""
        raise GasnasError(f"{len(summary.failed)} image(s) could not be read: {names}{more}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="batch-1 latency/FPS of a derived net (and torchvision peers)",
                       description="Median and p90 latency, FPS, params and FLOPs at batch 1; "
                       "with --baselines the torchvision real-time peers are timed in the same "
                       "run, interleaved round-robin.")
    _add_model_args(b)
    add_config_args(b)
    b.add_argument("--input", metavar="HxW", help="input size, e.g. 1024x2048 (default: bench.input_size)")
    b.add_argument("--backend", action="append", metavar="NAME",
                   help="torch, compile, onnxruntime or tensorrt; repeat or comma-separate for "
                   "one column each (default: bench.backend)")
    b.add_argument("--device", help="cpu or cuda[:N] (default: bench.device)")
    b.add_argument("--dtype", help="fp32, fp16 or bf16 (default: bench.dtype)")
    b.add_argument("--threads", type=int, help="intra-op threads (default: bench.threads or torch's)")
    b.add_argument("--runs", type=int, help="timed runs per entry (default: bench.runs)")
    b.add_argument("--warmup", type=int, help="untimed warm-up runs per entry; the first one also "
                   "checks that the backend works (default: bench.warmup)")
    b.add_argument("--baselines", action="store_true",
                   help="also time lraspp_mobilenet_v3_large, deeplabv3_mobilenet_v3_large, fcn_resnet50")
    b.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    b.add_argument("--markdown", metavar="OUT", help="write the table as markdown")
    b.set_defaults(func=_bench)

    e = sub.add_parser("export", help="export to ONNX, checked for parity with torch before writing")
    _add_model_args(e)
    e.add_argument("--onnx", required=True, metavar="OUT", help="output .onnx file")
    e.add_argument("--input", required=True, metavar="HxW", help="export input size, e.g. 1024x2048")
    e.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width axes (parity checked at a second size)")
    e.add_argument("--images", nargs="+", metavar="PATH",
                   help="image files/folders for the parity check (default: synthetic scenes)")
    e.add_argument("--atol", type=float, default=1e-4, help="max |Δlogit| allowed (default 1e-4)")
    e.add_argument("--min-agreement", type=float, default=0.999,
                   help="min fraction of pixels whose argmax agrees (default 0.999)")
    e.set_defaults(func=_export)

    p = sub.add_parser("predict", help="colourised masks (and overlays) for images or folders")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="trained checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders (png/jpg)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write the mask blended over the image")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.set_defaults(func=_predict)
