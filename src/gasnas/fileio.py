"""Atomic writes: a file either has its complete new content or its old one, never a part."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def exclusive_lock(path: str | Path | None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (the same lock as `flock -x PATH`) while the block runs;
    None: no lock. Benchmarks take it so that two timed jobs never share the CPU."""
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file over ``path`` (same folder, same fs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp made it 0600; give plain open()'s mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line GasnasError naming it."""
    from gasnas.errors import GasnasError

    path = Path(path)
    if not path.is_file():
        raise GasnasError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GasnasError(f"{path}: not valid JSON ({exc})") from None


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def torch_load(path: str | Path) -> Any:
    """Load a checkpoint safely (tensors and plain containers only; no pickled code)."""
    import torch

    from gasnas.errors import GasnasError

    path = Path(path)
    if not path.is_file():
        raise GasnasError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
        raise GasnasError(f"{path}: not a readable gasnas checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from None
