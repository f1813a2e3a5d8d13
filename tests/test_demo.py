"""`gasnas demo --quick`: the whole chain (synth → LUT → search → train → eval → bench) at tiny size."""

from __future__ import annotations

import json

import pytest

from gasnas.cli import main

pytestmark = pytest.mark.slow  # the whole demo end to end (CI runs it too)


def test_demo_quick_writes_report(tmp_path, capsys) -> None:
    rc = main(["demo", "--quick", "--out-dir", str(tmp_path), "--no-progress"])
    assert rc == 0
    run = tmp_path / "demo-quick"
    report = (run / "report.md").read_text()
    for heading in ("## Result", "## Per-class IoU", "## Speed at", "## Stage wall times"):
        assert heading in report
    for peer in ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"):
        assert peer in report
    summary = json.loads((run / "demo.json").read_text())
    assert 0.0 <= summary["miou"] <= 1.0
    assert summary["measured_ms"] > 0 and summary["predicted_ms"] > 0
    assert set(summary["stages_s"]) == {"data", "search", "train", "eval", "latency", "bench"}
    assert (run / "predictions.png").stat().st_size > 1000
    assert (run / "genotype.json").is_file()
    assert "report:" in capsys.readouterr().out
    # A second run continues the finished one instead of refusing or starting over.
    assert main(["demo", "--quick", "--out-dir", str(tmp_path), "--no-progress", "--no-peers"]) == 0
    assert "continuing the earlier demo run" in capsys.readouterr().out
    assert json.loads((run / "demo.json").read_text())["genotype"] == summary["genotype"]


def test_demo_bad_override_is_one_line(capsys) -> None:
    assert main(["demo", "--quick", "--set", "search.epoch=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.epoch" in err[0]
