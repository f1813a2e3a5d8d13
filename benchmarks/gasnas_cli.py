"""What the benchmark drivers share: running `gasnas` commands as a user would type them.

Each driver imports `run_gasnas` into its own namespace and calls it for every command, so a test
replaces it there (monkeypatch `driver.run_gasnas`) and the driver runs nothing."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time


def run_gasnas(args: list[str], lock: str | None) -> float:
    """Run one `gasnas` command (printed first; under an exclusive flock when given); its wall s."""
    print("$ gasnas " + shlex.join(args), flush=True)
    full = (["flock", "-x", lock] if lock else []) + [sys.executable, "-m", "gasnas", *args]
    t0 = time.perf_counter()
    subprocess.run(full, check=True)
    return time.perf_counter() - t0


def set_flags(items: list[str]) -> list[str]:
    """`--set KEY=VALUE` for each item."""
    return [x for s in items for x in ("--set", s)]
