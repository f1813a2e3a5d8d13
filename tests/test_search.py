"""Search end to end on a tiny space: run folder, which step moves which parameters, λ adaptation,
final-genotype selection, NaN stop, Ctrl-C, one-line errors."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from test_engine_support import data_root, shared_lut, tiny_config

import gasnas.engine.search as search_mod
from gasnas.cli import main
from gasnas.engine.architect import Architect
from gasnas.engine.checkpoint import load as load_ckpt
from gasnas.engine.search import SearchRun, calm_reference, run_search
from gasnas.latency.sampling import genotype_signature
from gasnas.space.genotype import Genotype

ROW_FIELDS = {"epoch", "phase", "lr", "lambda", "w_loss", "a_loss", "a_ce", "lat_loss", "expected_ms",
              "predicted_ms", "measured_ms", "val_miou", "alpha_entropy", "alpha_spread", "genotype"}


def _write_config(cfg, path: Path) -> Path:
    path.write_text(cfg.dump())
    return path


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before, params) -> list[bool]:
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params)]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One instrumented search: 2 epochs (1 warm-up), 3 steps each, derived latency measured."""
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    out = tmp_path_factory.mktemp("search")
    cfg = tiny_config(data, out, "s", f"latency.lut={lut}", "search.measure_derived=true")
    events: list[tuple[str, list[bool], list[bool]]] = []
    weight_step, arch_step = search_mod.weight_step, Architect.step

    def spy_weight_step(supernet, *args, **kw):
        a, w = supernet.arch_parameters(), supernet.weight_parameters()
        ba, bw = _snapshot(a), _snapshot(w)
        out = weight_step(supernet, *args, **kw)
        events.append(("w", _changed(ba, a), _changed(bw, w)))
        return out

    def spy_arch_step(self, *args, **kw):
        a, w = self.supernet.arch_parameters(), self.supernet.weight_parameters()
        ba, bw = _snapshot(a), _snapshot(w)
        out = arch_step(self, *args, **kw)
        events.append(("a", _changed(ba, a), _changed(bw, w)))
        return out

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(search_mod, "weight_step", spy_weight_step)
            mp.setattr(Architect, "step", spy_arch_step)
            path = run_search(cfg, show_progress=False)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    return SimpleNamespace(cfg=cfg, path=path, run_dir=cfg.run_dir, events=events)


def test_search_writes_the_run_folder(searched) -> None:
    run = searched.run_dir
    assert searched.path == run / "genotype.json"
    g = Genotype.load(searched.path)
    assert g.predicted_latency_ms is not None and g.predicted_latency_ms > 0
    for key in ("dataset", "seed", "config", "measured_latency_ms", "selected_epoch"):
        assert key in g.provenance, key
    assert g.provenance["config"] == "s" and g.provenance["measured_latency_ms"] > 0
    for name in ("config.yaml", "lut.json", "metrics.jsonl", "genotype_epoch1.json", "genotype_epoch2.json",
                 "checkpoints/last.pt", "plots/losses.png", "plots/miou.png", "plots/latency.png",
                 "plots/alphas.png", "plots/alpha_movement.png", "plots/genotype.png"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "s"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["phase"] for r in rows] == ["warmup", "search"]
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert len(r["alpha_entropy"]) == 5 and r["measured_ms"] > 0 and 0 <= r["val_miou"] <= 1
        assert len(r["alpha_spread"]) == 5 and r["alpha_spread_mean"] == pytest.approx(sum(r["alpha_spread"]) / 5)
    assert g.provenance["alpha_spread_mean"] == rows[-1]["alpha_spread_mean"]
    assert rows[0]["a_loss"] is None and rows[1]["a_loss"] is not None
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine
    ck = load_ckpt(run / "checkpoints/last.pt", "search")
    assert (ck["epoch"], ck["step"]) == (2, 0)


def test_each_step_moves_only_its_own_parameters(searched) -> None:
    kinds = [k for k, _, _ in searched.events]
    assert kinds == ["w"] * 3 + ["w", "a"] * 3  # warm-up: weights only; then alternation
    for kind, arch_changed, weights_changed in searched.events:
        if kind == "w":
            assert not any(arch_changed), "a weight step changed α or the GGM"
            assert any(weights_changed)
        else:
            assert not any(weights_changed), "an architecture step changed network weights"
    # every α tensor and the GGM's W move in every arch step; θ and φ from the second one on
    # (W starts at zero so that α' = α, and θ, φ reach the loss only through W)
    arch_events = [changed for kind, changed, _ in searched.events if kind == "a"]
    assert all(all(c) for c in arch_events[1:])
    assert all(arch_events[0][:5]) and arch_events[0][-1]


def test_target_mode_adapts_lambda_every_step_from_the_calibrated_derived_net(tmp_path_factory, single_thread, capsys) -> None:
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    cfg = tiny_config(data, tmp_path_factory.mktemp("target"), "t", f"latency.lut={lut}",
                      "search.measure_derived=true", "search.epochs=3", "search.latency_warmin_epochs=0",
                      "search.latency_ramp_epochs=1", "latency.lambda_lr=0.5")
    recipe = _write_config(cfg, cfg.run_dir.parent / "t.yaml")
    assert main(["search", "--config", str(recipe), "--target-ms", "0.01", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    lam0 = cfg.latency.target_weight
    assert rows[0]["lambda"] == lam0 and rows[0]["lambda_eff_mean"] is None  # warm-up: no arch step
    # 0.01 ms is unreachable: λ grows every step by exp(0.5 · clip(d/T - 1, ±1)) = e^0.5 (3 steps an epoch)
    assert rows[1]["lambda"] == pytest.approx(lam0 * math.exp(1.5)) and rows[2]["lambda"] == pytest.approx(lam0 * math.exp(3.0))
    assert 0 < rows[1]["lambda_eff_mean"] < rows[1]["lambda"]  # the ramp: λ_eff rose over epoch 2
    # each epoch end's measurement recalibrates the derived net's prediction: the median of
    # measured / predicted over the last distinct nets (a net derived again replaces its entry) ...
    window: list[tuple[str, float]] = []
    for r in rows:
        net = genotype_signature(Genotype.load(cfg.run_dir / r["genotype"]))
        window = [(k, c) for k, c in window if k != net] + [(net, r["measured_ms"] / r["predicted_ms"])]
        window = window[-cfg.search.calibration_window:]
        assert r["calibration"] == pytest.approx(statistics.median(c for _, c in window), rel=1e-6)
    # ... and every step's hinge compares E[Lat] with T · E[Lat]/d, d = prediction x calibration:
    # at an epoch end that is the last step's α' and the calibration of the epoch before
    assert rows[0]["budget_scale"] == pytest.approx(rows[0]["expected_ms"] / rows[0]["predicted_ms"], rel=1e-5)
    for prev, r in zip(rows, rows[1:]):
        assert r["budget_scale"] == pytest.approx(r["expected_ms"] / (r["predicted_ms"] * prev["calibration"]), rel=1e-5)
    g = Genotype.load(cfg.run_dir / "genotype.json")
    assert g.provenance["target_ms"] == 0.01 and g.provenance["within_target"] is False
    # the latency reference is the first measured net, and its calmest timing scales every epoch
    reference, calm_ms = calm_reference(cfg.run_dir)
    first = Genotype.load(cfg.run_dir / "genotype_epoch1.json")
    assert genotype_signature(reference) == genotype_signature(first)
    assert 0 < calm_ms <= rows[0]["measured_ms"] + 1e-9
    assert g.provenance["measured_latency_ms"] == pytest.approx(
        next(r for r in rows if r["epoch"] == g.provenance["selected_epoch"])["latency_ratio"] * calm_ms)
    assert "within" in capsys.readouterr().err  # the warning says the target was missed


def test_target_ratio_sets_the_budget_from_the_peer_timed_on_the_search_scale(tmp_path_factory, single_thread) -> None:
    """`--target-ratio R`: T = R × LR-ASPP's latency as the search's timer measures it, set before
    the first step and after every epoch's measurement, and recorded with the genotype."""
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    cfg = tiny_config(data, tmp_path_factory.mktemp("ratio"), "r", f"latency.lut={lut}",
                      "search.measure_derived=true", "search.measure_isolated=false",
                      "search.derive_within_budget=true")
    recipe = _write_config(cfg, cfg.run_dir.parent / "r.yaml")
    assert main(["search", "--config", str(recipe), "--target-ratio", "0.0001", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    peer_ms = rows[0]["peer_ms"]
    assert peer_ms > 0 and all(r["peer_ms"] == peer_ms for r in rows)  # in-process: timed once
    assert all(r["budget_ms"] == pytest.approx(1e-4 * peer_ms) for r in rows)
    g = Genotype.load(cfg.run_dir / "genotype.json")
    assert g.provenance["target_ratio"] == 1e-4 and g.provenance["reference_peer"] == "lraspp_mobilenet_v3_large"
    assert g.provenance["target_ms"] == pytest.approx(1e-4 * peer_ms)
    # 1e-4 x LR-ASPP lies below every net of the space on any machine: the derivation swaps ops
    assert all(r["predicted_ms"] <= r["argmax_predicted_ms"] + 1e-9 for r in rows)
    assert any(r["budget_swaps"] > 0 for r in rows)
    saved = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())["latency"]
    assert (saved["loss"], saved["target_ratio"], saved["target_ms"]) == ("target", 1e-4, None)


def test_budget_slack_leaves_an_argmax_net_inside_its_dead_band_alone(tmp_path_factory, single_thread) -> None:
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    cfg = tiny_config(data, tmp_path_factory.mktemp("slack"), "k", f"latency.lut={lut}",
                      "search.measure_derived=true", "search.measure_isolated=false",
                      "search.derive_within_budget=true", "search.budget_slack=1000000.0")
    recipe = _write_config(cfg, cfg.run_dir.parent / "k.yaml")
    assert main(["search", "--config", str(recipe), "--target-ms", "0.01", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["budget_swaps"] == 0 and r["predicted_ms"] == r["argmax_predicted_ms"] for r in rows)


def test_final_genotype_selection_with_a_target() -> None:
    from gasnas.config import LatencyConfig
    from gasnas.latency.isolated import CalmLatency
    from gasnas.latency.timers import InProcessLatency

    def fake(rows, loss="target", target=10.0):
        lat = SimpleNamespace(loss=loss, target_ms=target)
        return SimpleNamespace(metrics=SimpleNamespace(rows=lambda: rows), run_dir=Path("r"), main=False,
                               cfg=SimpleNamespace(latency=lat), timer=InProcessLatency(lat),
                               budget=SimpleNamespace(target_ms=target))

    rows = [{"epoch": 1, "phase": "warmup", "genotype": "g1", "measured_ms": 10.0, "predicted_ms": 9},
            {"epoch": 2, "phase": "search", "genotype": "g2", "measured_ms": 10.5, "predicted_ms": 9},
            {"epoch": 3, "phase": "search", "genotype": "g3", "measured_ms": 13.0, "predicted_ms": 9},
            {"epoch": 4, "phase": "search", "genotype": "g4", "measured_ms": 12.0, "predicted_ms": 9}]
    assert SearchRun.select_final(fake(rows))[0] == 2  # latest post-warm-up epoch within ±10%
    assert SearchRun.select_final(fake(rows[:1] + rows[2:]))[0] == 4  # none within: the last
    # an epoch inside the budget that the search went on to change is not the result
    longer = rows + [{"epoch": e, "phase": "search", "genotype": f"g{e}", "measured_ms": 13.0, "predicted_ms": 9}
                     for e in (5, 6, 7)]
    assert SearchRun.select_final(fake(longer))[0] == 7
    assert SearchRun.select_final(fake(rows, loss="linear"))[0] == 4  # no target: the last
    # with calm-phase ratios, the end-of-search reference scale decides, not the logged ms
    scaled = [{**r, "latency_ratio": r["measured_ms"] / 20.0} for r in rows]
    run = fake(scaled)
    run.timer = CalmLatency(LatencyConfig(), threads=1)
    run.timer.reference_calm_ms = 20.0 * 10.0 / 12.0  # calmer: 12 ms now reads 10
    assert SearchRun.select_final(run)[0] == 4
    assert SearchRun.measured_ms(run, scaled[3]) == pytest.approx(10.0)


def test_alpha_spread_is_the_logit_gap_and_a_near_uniform_end_is_noted(capsys) -> None:
    from gasnas.engine.search import UNSETTLED_SPREAD, alpha_entropy, alpha_spread

    uniform = torch.full((3, 4), 0.25)
    moved = torch.softmax(torch.tensor([[0.0, 0.0, 0.1, 0.3], [1.0, 0.0, 0.0, 0.0]]), -1)
    assert alpha_spread([uniform, moved]) == pytest.approx([0.0, (0.3 + 1.0) / 2])
    # entropy barely sees a small move (second order), the spread does (first order)
    small = torch.softmax(torch.tensor([[0.0, 0.0, 0.0, 0.08]]), -1)
    assert 1 - alpha_entropy([small])[0] / math.log(4) < 1e-3 and alpha_spread([small])[0] == pytest.approx(0.08)

    sc = SimpleNamespace(epochs=6, max_steps_per_epoch=10, a_lr=3e-3)
    run = SimpleNamespace(cfg=SimpleNamespace(search=sc), main=True)
    SearchRun._note_settledness(run, {"alpha_spread_mean": 0.08, "unchanged_last_3_epochs": 0.5, "skip_share": 0.25})
    err = capsys.readouterr().err
    assert "search not settled: α' spread 0.08" in err and "50% of kept edges unchanged" in err
    assert "near uniform" in err and "search.a_lr (0.003)" in err and "search.epochs (6)" in err
    assert "search.max_steps_per_epoch (10)" in err
    SearchRun._note_settledness(run, {"alpha_spread_mean": 2.5, "unchanged_last_3_epochs": 0.95, "skip_share": 0.0})
    err = capsys.readouterr().err
    assert "search settled: α' spread 2.50" in err and "near uniform" not in err
    SearchRun._note_settledness(run, {"alpha_spread_mean": UNSETTLED_SPREAD, "unchanged_last_3_epochs": None,
                                      "skip_share": 0.0})
    assert "near uniform" not in capsys.readouterr().err
    SearchRun._note_settledness(run, {"alpha_spread_mean": None, "unchanged_last_3_epochs": None, "skip_share": 0})
    assert capsys.readouterr().err == ""


def test_nan_stops_with_one_line_and_keeps_last_checkpoint(tmp_path_factory, single_thread, monkeypatch, capsys) -> None:
    from gasnas.engine.losses import CrossEntropy

    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    cfg = tiny_config(data, tmp_path_factory.mktemp("nan"), "n", f"latency.lut={lut}")
    recipe = _write_config(cfg, cfg.run_dir.parent / "n.yaml")
    calls = {"n": 0}
    forward = CrossEntropy.forward

    def poisoned(self, logits, target, info=None):
        calls["n"] += 1
        loss = forward(self, logits, target, info)
        return loss * float("nan") if calls["n"] == 5 else loss  # epoch 2, step 1, arch step

    monkeypatch.setattr(CrossEntropy, "forward", poisoned)
    code = main(["search", "--config", str(recipe), "--ckpt-every-steps", "1", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gasnas:")]
    assert code == 2
    assert len(err) == 1 and "non-finite architecture loss" in err[0] and "epoch 2 step 1" in err[0]
    assert "last good checkpoint kept" in err[0]
    ck = load_ckpt(cfg.run_dir / "checkpoints/last.pt", "search")
    assert (ck["epoch"], ck["step"]) == (1, 0)  # the end of epoch 1, before the bad step
    assert all(torch.isfinite(v).all() for v in ck["supernet"].values() if v.is_floating_point())


def test_ctrl_c_saves_and_resume_finishes(tmp_path_factory, single_thread, monkeypatch, capsys) -> None:
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    cfg = tiny_config(data, tmp_path_factory.mktemp("sigint"), "c", f"latency.lut={lut}")
    recipe = _write_config(cfg, cfg.run_dir.parent / "c.yaml")
    weight_step, calls = search_mod.weight_step, {"n": 0}
    handler_before = signal.getsignal(signal.SIGINT)

    def interrupting(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C were pressed during step 2
        return weight_step(*args, **kw)

    monkeypatch.setattr(search_mod, "weight_step", interrupting)
    assert main(["search", "--config", str(recipe), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted at epoch 1 step 2; checkpoint saved to" in err and "--resume" in err
    ck = load_ckpt(cfg.run_dir / "checkpoints/last.pt", "search")
    assert (ck["epoch"], ck["step"]) == (0, 2)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored
    monkeypatch.setattr(search_mod, "weight_step", weight_step)
    assert main(["search", "--resume", str(cfg.run_dir), "--no-progress"]) == 0
    assert Genotype.load(cfg.run_dir / "genotype.json").provenance["selected_epoch"] == 2


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("gasnas: error: ")
    return err[0]


def test_errors_exit_2_with_one_line(tmp_path_factory, single_thread, capsys) -> None:
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("errors")
    base = ["--no-progress", "--set", f"out_dir={tmp}"]

    cfg = tiny_config(tmp / "missing", tmp, "e1")
    recipe = _write_config(cfg, tmp / "e1.yaml")
    assert main(["search", "--config", str(recipe), *base]) == 2
    assert str(tmp / "missing") in _one_error_line(capsys)

    cfg = tiny_config(data, tmp, "e2", f"latency.lut={lut}", "latency.threads=2")
    recipe = _write_config(cfg, tmp / "e2.yaml")
    assert main(["search", "--config", str(recipe), *base]) == 2
    assert "threads" in _one_error_line(capsys)  # a table measured under other conditions

    assert main(["search", "--resume", str(tmp / "nothing"), *base]) == 2
    assert "nothing" in _one_error_line(capsys)

    bad = tmp / "bad.json"
    bad.write_text('{"schema_version": 1, "num_classes": 11, "space": {}, "cells": []}')
    cfg = tiny_config(data, tmp, "e3")
    recipe = _write_config(cfg, tmp / "e3.yaml")
    assert main(["train", "--genotype", str(bad), "--config", str(recipe), *base]) == 2
    assert "bad.json" in _one_error_line(capsys)

    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "bad.json" in _one_error_line(capsys)


def test_existing_run_folder_is_not_overwritten(searched, capsys) -> None:
    recipe = _write_config(searched.cfg, searched.run_dir.parent / "again.yaml")
    assert main(["search", "--config", str(recipe), "--no-progress"]) == 2
    assert "--resume" in _one_error_line(capsys)
