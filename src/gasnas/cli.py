"""The `gasnas` command: one entry point, subcommands registered by each package.

Each of data/, space/, latency/, engine/, deploy/ has a light `commands.py` with
`register(subparsers)`; heavy imports happen inside the handlers so `gasnas --help` is fast.
A GasnasError anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gasnas import __version__
from gasnas.errors import GasnasError

COMMAND_MODULES = [
    "gasnas.data.commands",
    "gasnas.space.commands",
    "gasnas.latency.commands",
    "gasnas.engine.commands",
    "gasnas.deploy.commands",
    "gasnas.demo",
]


def _config_show(args: argparse.Namespace) -> int:
    from gasnas.config import load_config

    print(load_config(args.recipe, args.overrides).dump(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gasnas",
        description="Graph-guided architecture search for real-time semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"gasnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cfg = sub.add_parser("config", help="show the resolved configuration of a recipe")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", help="print a recipe with its _base_ and --set applied")
    show.add_argument("recipe", nargs="?", default=None)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=_config_show)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except GasnasError as exc:
        print(f"gasnas: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gasnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
