"""The latency lookup table: measured milliseconds per key, with the environment they hold for.

JSON layout (schema-versioned, written atomically):

    {"schema_version": 1,
     "env": {device, device_name, threads, backend, dtype, torch_version, python,
             gasnas_version, date, warmup, repeats},
     "entries": {"conv_3x3_H45_W60_Cin64_Cout64_s1_d1": 4.71, ...},
     "calibration": [ {scope, params, fitted_on, ...}, ... ]}   # see latency/calibrate.py

A table holds for the device, thread count, backend and dtype it was measured with; using it
under another environment is refused unless explicitly allowed (`allow_foreign_lut`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gasnas.errors import GasnasError
from gasnas.fileio import read_json, write_json_atomic

LUT_SCHEMA_VERSION = 1
# Fields that decide whether a table's numbers hold here; compared in this order.
ENV_FIELDS = ("device", "device_name", "threads", "backend", "dtype")


@dataclass
class LatencyTable:
    entries: dict[str, float] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: str) -> float:
        return self.entries[key]

    @property
    def input_size(self) -> list[int] | None:
        """The input size the table was first built for (`env.input_sizes[0]`), if recorded."""
        sizes = self.env.get("input_sizes") or []
        return list(sizes[0]) if sizes else None

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "<in-memory latency table>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": LUT_SCHEMA_VERSION,
            "env": self.env,
            "entries": dict(sorted(self.entries.items())),
            "calibration": self.calibration,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the table atomically (to `path`, or where it was loaded from)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("LatencyTable.save: no path given and the table has none")
        write_json_atomic(target, self.to_dict())
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        return cls.from_dict(read_json(path, "latency table"), path)

    @classmethod
    def from_dict(cls, data: Any, path: Path | None = None) -> LatencyTable:
        src = str(path) if path is not None else "latency table"
        if not isinstance(data, dict):
            raise GasnasError(f"{src}: a latency table must be a JSON object")
        version = data.get("schema_version")
        if version != LUT_SCHEMA_VERSION:
            raise GasnasError(f"{src}: field 'schema_version': {version!r} is not supported "
                              f"(this gasnas reads {LUT_SCHEMA_VERSION})")
        env, entries, calib = data.get("env"), data.get("entries"), data.get("calibration", [])
        if not isinstance(env, dict):
            raise GasnasError(f"{src}: field 'env': expected an object")
        if not isinstance(entries, dict):
            raise GasnasError(f"{src}: field 'entries': expected an object of key -> milliseconds")
        for key, ms in entries.items():
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
                raise GasnasError(f"{src}: field 'entries.{key}': {ms!r} is not a latency in ms")
        if not isinstance(calib, list) or not all(isinstance(c, dict) for c in calib):
            raise GasnasError(f"{src}: field 'calibration': expected a list of objects")
        return cls({k: float(v) for k, v in entries.items()}, env, calib, path)

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k not in self.entries]

    def check_environment(self, current: dict[str, Any], allow_foreign: bool = False) -> None:
        """Refuse a table measured elsewhere: name the file and the first mismatching field."""
        if allow_foreign:
            return
        for name in ENV_FIELDS:
            if name not in current:
                continue
            have, want = self.env.get(name), current[name]
            if have != want:
                raise GasnasError(
                    f"{self.source}: measured with {name}={have!r}, this run has {name}={want!r} "
                    f"(rebuild it with `gasnas latency build`, or allow it with "
                    f"--allow-foreign-lut / latency.allow_foreign_lut=true)")


def current_environment(lat_cfg: Any) -> dict[str, Any]:
    """What `lat_cfg` (a LatencyConfig) would measure with, in the table's `env` terms."""
    from gasnas.latency.timing import environment

    return environment(lat_cfg.device, lat_cfg.threads, lat_cfg.backend, lat_cfg.dtype)
