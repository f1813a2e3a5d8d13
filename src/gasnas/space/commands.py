"""CLI for the search space: `gasnas arch show GENOTYPE` (heavy imports inside the handler, so
`gasnas --help` does not load torch)."""

from __future__ import annotations

import argparse


def _show(args: argparse.Namespace) -> int:
    from gasnas.config import parse_size
    from gasnas.space.complexity import count_flops, count_params
    from gasnas.space.derived import DerivedNet
    from gasnas.space.genotype import Genotype

    genotype = Genotype.load(args.genotype)
    size = parse_size(args.input)
    net = DerivedNet(genotype)
    print(f"genotype      {args.genotype}  (schema v{genotype.schema_version}, {len(genotype.cells)} cells)")
    for k, cell in enumerate(genotype.cells):
        kind = "reduction" if cell.reduction else "normal   "
        edges = ", ".join(f"{op}({s}->n{d})" for s, d, op in cell.edges)
        print(f"  cell {k:2d} {kind} {edges}")
    print(f"params        {count_params(net) / 1e6:.3f} M")
    print(f"FLOPs         {count_flops(net, size) / 1e9:.3f} G at {size[0]}x{size[1]}")
    if args.lut:
        from gasnas.latency import LatencyEstimator, LatencyTable

        lut = LatencyTable.load(args.lut)
        est = LatencyEstimator(genotype.space, genotype.num_classes, lut, lut.input_size)
        print(f"predicted     {est.predict(genotype):.2f} ms  (LUT {args.lut})")
    elif genotype.predicted_latency_ms is not None:
        print(f"predicted     {genotype.predicted_latency_ms:.2f} ms  (stored in the genotype)")
    for key, value in sorted(genotype.provenance.items()):
        print(f"provenance    {key}: {value}")
    if args.out:
        from gasnas.viz import plot_genotype

        print(f"wrote         {plot_genotype(genotype, args.out)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    arch = sub.add_parser("arch", help="inspect a derived architecture")
    actions = arch.add_subparsers(dest="arch_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print a genotype's cells, params, FLOPs, latency; draw it")
    show.add_argument("genotype", help="genotype JSON written by `gasnas search`")
    show.add_argument("--out", default=None, help="PNG with every cell drawn as a DAG")
    show.add_argument("--input", default="360x480", help="input size HxW for FLOPs")
    show.add_argument("--lut", default=None, help="latency table to predict the latency with")
    show.set_defaults(func=_show)
