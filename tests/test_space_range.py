"""benchmarks/space_range.py at a tiny size: the report is well-formed and ordered."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "space_range.py"


def test_space_range_reports_an_ordered_range(tmp_path, single_thread) -> None:
    spec = importlib.util.spec_from_file_location("space_range", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "range.json"
    assert module.main(["--config", "demo", "--set", "latency.input_size=[64,96]", "--set", "latency.warmup=0",
                        "--set", "latency.repeats=1", "--threads", "1", "--draws", "6", "--calibrate", "0",
                        "--rounds", "1", "--repeats", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    p = r["predicted_ms"]
    assert 0 < p["fixed"] < p["cheapest"] <= p["drawn_p10"] <= p["drawn_p50"] <= p["drawn_p90"] <= p["costliest"]
    assert set(r["measured_ms_one_run"]) == {"lraspp", "cheapest", "median_drawn"}
    assert all(v > 0 for v in r["ratio_to_lraspp"].values())
