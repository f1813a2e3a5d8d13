"""Layers point one way: the import graph of src/gasnas, read from the source (no import runs).

- data/ and space/ know no loop: they import nothing from engine/, deploy/ or the CLI;
- latency/ imports nothing from engine/ or deploy/ (the search uses the table, not the reverse);
- engine/ and deploy/ import nothing from each other: both build and load networks through
  gasnas.models;
- nothing but `gasnas.__main__` imports the CLI;
- no module imports another module's private (underscore) names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gasnas"

FORBIDDEN = {
    "data": {"engine", "deploy", "cli", "demo"},
    "space": {"engine", "deploy", "cli", "demo"},
    "latency": {"engine", "deploy", "cli", "demo"},
    "deploy": {"engine", "cli", "demo"},
    "engine": {"deploy", "cli", "demo"},
    "models": {"engine", "deploy", "cli", "demo"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import in the file, relative ones
    resolved against the file's package."""
    mod = module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_source_tree_is_found() -> None:
    assert len(SOURCES) > 40 and (PACKAGE / "cli.py").is_file()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path: Path) -> None:
    mod = module_name(path)
    banned = FORBIDDEN.get(layer(mod), set())
    for target, names, line in imports(path):
        if not target.startswith("gasnas"):
            continue
        where = f"{path.relative_to(SRC)}:{line}"
        assert layer(target) not in banned, f"{where}: {layer(mod)}/ must not import {target}"
        if mod != "gasnas.__main__":
            assert target != "gasnas.cli", f"{where}: only gasnas.__main__ imports the CLI"
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private or target == mod, f"{where}: imports private {private} from {target}"
