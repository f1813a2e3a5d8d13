"""Atomic writes for what deploy hands to users (ONNX models, masks, reports), readable by
others: `fileio.atomic_write`'s temp file is created 0600, so the umask permissions a plain
`open()` would give are applied before the rename."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gasnas.fileio import atomic_write


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    def go(tmp: Path) -> None:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())

    return atomic_write(path, go)


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda p: p.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")
