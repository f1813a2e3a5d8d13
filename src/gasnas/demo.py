"""`gasnas demo`: the whole pipeline on embedded synthetic data (not yet implemented)."""

from __future__ import annotations

import argparse

from gasnas.errors import GasnasError


def _run(args: argparse.Namespace) -> int:
    raise GasnasError("gasnas demo is not yet available in this version")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesise data, search, train, evaluate and benchmark, offline")
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=_run)
