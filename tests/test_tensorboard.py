"""tensorboard: true mirrors metrics.jsonl's scalars (and figures) to RUN/tb; absent, one note."""

from __future__ import annotations

import builtins
import json

import pytest

from gasnas.engine.runtime import MetricsLog


def test_metrics_rows_are_mirrored_as_scalars(tmp_path) -> None:
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True)
    log.append({"epoch": 1, "w_loss": 2.5, "lambda": 0.1, "alpha_spread": [0.5, 1.5], "phase": "search", "ok": True})
    log.append({"epoch": 2, "w_loss": 2.0, "lambda": 0.2, "alpha_spread": [0.7, 1.9], "val_miou": None})
    log.tensorboard.close()
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"w_loss", "lambda", "alpha_spread/0", "alpha_spread/1"} <= tags
    assert "phase" not in tags and "ok" not in tags and "val_miou" not in tags
    assert [(e.step, e.value) for e in events.Scalars("w_loss")] == [(1, 2.5), (2, 2.0)]
    assert events.Scalars("alpha_spread/1")[-1].value == pytest.approx(1.9)


def test_missing_tensorboard_is_one_note_and_the_run_goes_on(tmp_path, monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True)
    log.append({"epoch": 1, "w_loss": 1.0})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorboard" in err and ".[tb]" in err
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "tb").exists()


def test_a_search_writes_scalars_and_figures_to_tensorboard(tmp_path_factory, single_thread) -> None:
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_engine_support import data_root, shared_lut, tiny_config

    from gasnas.engine.search import run_search

    cfg = tiny_config(data_root(tmp_path_factory), tmp_path_factory.mktemp("tb"), "tb",
                      f"latency.lut={shared_lut(tmp_path_factory)}", "tensorboard=true",
                      "search.max_steps_per_epoch=1")
    run_search(cfg, show_progress=False)
    events = EventAccumulator(str(cfg.run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"w_loss", "expected_ms", "lambda", "alpha_spread_mean"} <= set(events.Tags()["scalars"])
    assert {"alphas", "convergence", "cells_epoch"} <= set(events.Tags()["images"])
