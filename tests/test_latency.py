"""Latency table, differentiable expected latency, losses, calibration, validate, CLI.

Tiny space at 32x48, one thread, one or two repeats: these check behaviour, never accuracy
(predictor accuracy is measured by benchmarks/latency_predictor.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from gasnas.cli import main
from gasnas.config import Config, LatencyConfig, SpaceConfig, parse_size
from gasnas.errors import GasnasError
from gasnas.latency import (
    LatencyEstimator,
    LatencyTable,
    build_lut,
    get_or_build_lut,
    latency_loss,
    measure_genotype_ms,
)
from gasnas.latency.calibrate import calibrate, calibration_scope, fit_calibration
from gasnas.latency.contention import CpuWatch, Quiet
from gasnas.latency.keys import OpItem, space_layout
from gasnas.latency.measure import measure_item
from gasnas.latency.sampling import genotype_signature, spanning_genotypes
from gasnas.latency.timing import make_runner
from gasnas.latency.validate import pearson, spearman
from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import CellGene, Genotype, derive_genotype, genotype_weights
from gasnas.space.network import plan_cells
from gasnas.space.supernet import Supernet

SPACE = SpaceConfig(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1], nodes=2)
SIZE = [32, 48]
CLASSES = 3
LAT = LatencyConfig(input_size=SIZE, threads=1, warmup=0, repeats=1)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return build_lut(SPACE, CLASSES, LAT, progress=False, rounds=1)


@pytest.fixture()
def fresh_table(table: LatencyTable) -> LatencyTable:
    return LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))


def one_op_genotype(op: str, space: SpaceConfig = SPACE) -> Genotype:
    edges = [(0, 0, op), (1, 0, op), (0, 1, op), (2, 1, op)]
    return Genotype(space, CLASSES, [CellGene(p.reduction, edges) for p in plan_cells(space)])


# --------------------------------------------------------------------------- table and keys


def test_keys_carry_full_shape_and_match_the_real_network() -> None:
    # Odd sizes without padding to the stride (tests/test_input_padding.py: with): ceil division
    # everywhere.
    space = dataclasses.replace(SPACE, pad_to_stride=False)
    layout = space_layout(space, CLASSES, [33, 47])
    keys = {it.key for it in layout.items()}
    assert "conv_3x3_H5_W6_Cin8_Cout8_s1_d1" in keys
    assert "dil_sep_conv_3x3_r4_H5_W6_Cin16_Cout16_s2_d4" in keys
    assert "stem_H33_W47_C4-4-8" in keys
    assert not any(k.startswith("none_") for k in keys)
    net = DerivedNet(one_op_genotype("sep_conv_3x3", space)).eval()
    seen = []
    for cell in net.cells:
        cell.register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape), tuple(i[1].shape), tuple(o.shape))))
    with torch.no_grad():
        net(torch.randn(1, 3, 33, 47))
    for cl, (s0, s1, out) in zip(layout.cells, seen):
        sk = cl.skeleton
        assert (sk.c_pp, sk.h0, sk.w0) == s0[1:] and (sk.c_p, sk.h1, sk.w1) == s1[1:]
        node_edge = [e for e in cl.edges if e.src >= 2][0]
        assert (cl.plan.c, node_edge.h, node_edge.w) == out[1:]
    assert layout.head.feats[-1] == tuple(seen[-1][2][1:])


def test_table_has_every_key_and_environment(table: LatencyTable) -> None:
    layout = space_layout(SPACE, CLASSES, SIZE)
    assert table.missing([it.key for it in layout.items()]) == []
    for field in ("device", "device_name", "threads", "backend", "dtype", "torch_version",
                  "gasnas_version", "date"):
        assert field in table.env
    assert table.env["threads"] == 1 and table.input_size == SIZE
    assert all(v >= 0 for v in table.entries.values())


def test_json_round_trip_and_atomic_write(table: LatencyTable, tmp_path: Path, monkeypatch) -> None:
    path = table.save(tmp_path / "lut.json")
    back = LatencyTable.load(path)
    assert back.entries == table.entries and back.env == table.env and back.path == path
    assert [p.name for p in tmp_path.iterdir()] == ["lut.json"]
    before = path.read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(RuntimeError):
        back.save()
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["lut.json"]


def test_bad_table_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(GasnasError, match="a.json: not valid JSON"):
        LatencyTable.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"schema_version": 1, "env": {}, "entries": {"k": -1}}))
    with pytest.raises(GasnasError, match="entries.k"):
        LatencyTable.load(tmp_path / "b.json")
    with pytest.raises(GasnasError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- expected latency


def test_expected_latency_is_the_table_sum_for_one_hot(table: LatencyTable) -> None:
    est = LatencyEstimator(SPACE, CLASSES, table, SIZE, LAT, calibrated=False)
    g = derive_genotype(Supernet(SPACE, CLASSES))
    layout = est.layout
    by_hand = sum(table[it.key] for it in layout.fixed_items())
    for cl, cell in zip(layout.cells, g.cells):
        for src, dst, op in cell.edges:
            edge = next(e for e in cl.edges if (e.src, e.node) == (src, dst))
            by_hand += table[edge.item(op).key]
    expected = est.expected_ms(genotype_weights(g))
    assert float(expected) == pytest.approx(by_hand, rel=1e-5)
    assert est.predict(g) == float(expected)


def test_none_costs_nothing(table: LatencyTable) -> None:
    est = LatencyEstimator(SPACE, CLASSES, table, SIZE, LAT, calibrated=False)
    none = SPACE.ops.index("none")
    weights = []
    for c in est.costs:
        w = torch.zeros_like(c, dtype=torch.float32)
        w[:, none] = 1.0
        weights.append(w)
    assert float(est.expected_ms(weights)) == pytest.approx(est.raw_fixed_ms, rel=1e-6)
    assert all(float(c[:, none].abs().sum()) == 0.0 for c in est.costs)


def test_gradient_reaches_op_weights_alphas_and_ggm(table: LatencyTable) -> None:
    est = LatencyEstimator(SPACE, CLASSES, table, SIZE, LAT)
    weights = [torch.full(c.shape, 1.0 / c.shape[1], requires_grad=True) for c in est.costs]
    est.expected_ms(weights).backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
    net = Supernet(SPACE, CLASSES)
    assert net.ggm.mode == "adjacent"
    with torch.no_grad():
        net.ggm.weight.weight.normal_(std=0.1)  # as after the first architecture step (it starts at 0)
    est.expected_ms(net.op_weights()).backward()
    for p in net.arch_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(a.grad.abs().sum() > 0 for a in net.alphas)
    assert all(p.grad.abs().sum() > 0 for p in net.ggm.parameters())
    assert all(p.grad is None for p in net.weight_parameters())


def test_calibration_is_affine_and_predict_matches_one_hot(fresh_table: LatencyTable) -> None:
    raw = LatencyEstimator(SPACE, CLASSES, fresh_table, SIZE, LAT, calibrated=False)
    scope = calibration_scope(SPACE, CLASSES, SIZE)
    fresh_table.calibration.append({"model": "stage_affine", "scope": scope,
                                    "stage_scale": [1.5, 0.5, 2.0], "offset_ms": 0.25, "fitted_on": []})
    est = LatencyEstimator(SPACE, CLASSES, fresh_table, SIZE, LAT)
    assert est.calibration is not None
    for op in ("conv_3x3", "skip_connect", "dil_sep_conv_3x3_r8"):
        g = one_op_genotype(op)
        stage_ms = raw.stage_op_ms(g)
        want = raw.raw_fixed_ms + 0.25 + 1.5 * stage_ms[0] + 0.5 * stage_ms[1] + 2.0 * stage_ms[2]
        assert est.predict(g) == pytest.approx(want, rel=1e-5)
        assert est.predict(g) == float(est.expected_ms(genotype_weights(g)))
    other = dataclasses.replace(SPACE, head_channels=8)  # another skeleton: calibration not used
    assert LatencyEstimator(other, CLASSES, fresh_table, SIZE, LAT).calibration is None


def test_fit_calibration_recovers_an_affine_truth() -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(12, 3, generator=gen) * 20).tolist()
    fixed, true_a, true_c = 10.0, [0.8, 1.3, 1.1], -2.0
    y = [fixed + true_c + sum(a * v for a, v in zip(true_a, row)) for row in x]
    scales, offset = fit_calibration(fixed, x, y, ridge=0.0)
    assert scales == pytest.approx(true_a, abs=1e-6) and offset == pytest.approx(true_c, abs=1e-6)


# --------------------------------------------------------------------------- losses and λ


@pytest.mark.parametrize("mode", ["linear", "log", "target"])
def test_loss_modes_value_and_gradient_sign(mode: str) -> None:
    cfg = LatencyConfig(loss=mode, target_ms=10.0, log_beta=0.6)
    lam = 0.5
    for e_val in (5.0, 20.0):
        e = torch.tensor(e_val, requires_grad=True)
        out = latency_loss(e, cfg, lam)
        out.backward()
        loss = out.detach()
        if mode == "linear":
            assert float(loss) == pytest.approx(lam * e_val) and float(e.grad) > 0
        elif mode == "log":
            assert float(loss) == pytest.approx(lam * 0.6 * math.log(e_val / 10.0))
            assert float(e.grad) == pytest.approx(lam * 0.6 / e_val)
        elif e_val < 10.0:
            assert float(loss) == 0.0 and float(e.grad) == 0.0
        else:
            assert float(loss) == pytest.approx(lam * (e_val / 10.0 - 1.0)) and float(e.grad) > 0


def test_target_loss_budget_scale_moves_the_hinge() -> None:
    cfg = LatencyConfig(loss="target", target_ms=10.0)
    e = torch.tensor(15.0, requires_grad=True)
    assert float(latency_loss(e, cfg, 1.0).detach()) == pytest.approx(0.5)  # 15 ms against 10
    out = latency_loss(e, cfg, 1.0, budget_scale=2.0)  # the derived net is half of E[Lat]: 7.5 ms
    out.backward()
    assert float(out.detach()) == 0.0 and float(e.grad) == 0.0
    assert float(latency_loss(torch.tensor(30.0), cfg, 1.0, budget_scale=2.0)) == pytest.approx(0.5)


def test_target_loss_needs_a_budget() -> None:
    with pytest.raises(GasnasError, match="target_ms"):
        latency_loss(torch.tensor(3.0), LatencyConfig(loss="target"), 1.0)


# --------------------------------------------------------------------------- missing / foreign


def test_missing_key_measured_on_the_spot_or_refused(fresh_table: LatencyTable) -> None:
    key = next(k for k in fresh_table.entries if k.startswith("conv_3x3_"))
    del fresh_table.entries[key]
    fresh_table.path = Path("some/lut.json")
    strict = dataclasses.replace(LAT, measure_missing=False)
    with pytest.raises(GasnasError) as err:
        LatencyEstimator(SPACE, CLASSES, fresh_table, SIZE, strict)
    assert key in str(err.value) and "some/lut.json" in str(err.value)
    assert "\n" not in str(err.value)
    est = LatencyEstimator(SPACE, CLASSES, fresh_table, SIZE, LAT)
    assert est.measured_now == [key] and key in fresh_table


def test_foreign_table_refused_unless_allowed(fresh_table: LatencyTable) -> None:
    fresh_table.path = Path("elsewhere/lut.json")
    fresh_table.env["threads"] = 7
    with pytest.raises(GasnasError) as err:
        LatencyEstimator(SPACE, CLASSES, fresh_table, SIZE, LAT)
    assert "elsewhere/lut.json" in str(err.value) and "threads" in str(err.value)
    fresh_table.env["threads"] = 1
    fresh_table.env["device_name"] = "Some Other CPU"
    with pytest.raises(GasnasError, match="device_name"):
        LatencyEstimator(SPACE, CLASSES, fresh_table, SIZE, LAT)
    est = LatencyEstimator(SPACE, CLASSES, fresh_table, SIZE, dataclasses.replace(LAT, allow_foreign_lut=True))
    assert est.predict(one_op_genotype("conv_3x3")) > 0


def test_get_or_build_lut_builds_once_then_reuses(tmp_path: Path, monkeypatch) -> None:
    cfg = Config(space=SPACE, latency=LAT)
    table = get_or_build_lut(cfg, tmp_path, CLASSES, progress=False, calibrate_samples=3)
    assert (tmp_path / "lut.json").is_file()
    assert len(table.calibration) == 1 and len(table.calibration[0]["fitted_on"]) == 3
    import gasnas.latency.estimator as estimator_mod

    monkeypatch.setattr(estimator_mod, "build_lut", lambda *a, **k: pytest.fail("rebuilt"))
    again = get_or_build_lut(cfg, tmp_path, CLASSES, progress=False, calibrate_samples=3)
    assert again.entries == table.entries and again.calibration == table.calibration
    # a configured table is used (and checked): a foreign one is refused
    foreign = LatencyTable.from_dict(table.to_dict())
    foreign.env["backend"] = "onnxruntime"
    foreign.save(tmp_path / "foreign.json")
    cfg2 = Config(space=SPACE, latency=dataclasses.replace(LAT, lut=str(tmp_path / "foreign.json")))
    with pytest.raises(GasnasError, match="foreign.json.*backend"):
        get_or_build_lut(cfg2, tmp_path / "run2", CLASSES, progress=False)


def test_measure_genotype_ms(table: LatencyTable) -> None:
    ms = measure_genotype_ms(one_op_genotype("skip_connect"), LAT)
    assert ms > 0 and math.isfinite(ms)


def test_isolated_measurement_runs_in_a_child_and_reports_its_errors() -> None:
    """The child builds and times both nets in alternating rounds; which net is slower is a
    timing, not asserted here (benchmarks measure speed)."""
    from gasnas.latency.isolated import measure_genotype_isolated

    t = measure_genotype_isolated(one_op_genotype("conv_3x3"), LAT, threads=1, rounds=2,
                                  reference=one_op_genotype("skip_connect"))
    assert len(t.medians_ms) == len(t.reference_ms) == 2
    assert all(ms > 0 and math.isfinite(ms) for ms in t.medians_ms + t.reference_ms)
    per_round = sorted(c / r for c, r in zip(t.medians_ms, t.reference_ms))
    assert t.ratio == pytest.approx(sum(per_round) / 2)  # the median of the per-round ratios
    assert t.ms == min(t.medians_ms) and t.reference_calm_ms == min(t.reference_ms)
    with pytest.raises(GasnasError, match="subprocess failed: .*reference.*warp_conv"):
        measure_genotype_isolated(one_op_genotype("conv_3x3"), LAT, threads=1,
                                  reference=one_op_genotype("warp_conv"))
    with pytest.raises(GasnasError, match="subprocess failed: .*warp_conv"):
        measure_genotype_isolated(one_op_genotype("warp_conv"), LAT, threads=1)


def test_a_peer_can_be_the_isolated_reference_and_round_trips() -> None:
    """`latency.target_ratio`: the child times a derived net beside a peer network; the
    reference is saved and read back as the peer, and a CalmLatency reports the peer's ms."""
    from gasnas.latency.isolated import (
        CalmLatency,
        PeerReference,
        measure_genotype_isolated,
        reference_from_dict,
    )

    peer = PeerReference("lraspp_mobilenet_v3_large", CLASSES)
    assert reference_from_dict(peer.to_dict(), "x") == peer
    assert isinstance(reference_from_dict(one_op_genotype("conv_3x3").to_dict(), "x"), Genotype)
    with pytest.raises(GasnasError, match="x: a peer reference needs"):
        reference_from_dict({"peer": "lraspp_mobilenet_v3_large"}, "x")
    t = measure_genotype_isolated(one_op_genotype("conv_3x3"), LAT, threads=1, rounds=1, reference=peer)
    assert len(t.reference_ms) == 1 and t.reference_ms[0] > 0 and t.ratio > 0
    timer = CalmLatency(LAT, threads=1, rounds=1, reference=peer)
    assert timer.peer_ms() is None  # nothing timed yet
    ms = timer.measure(one_op_genotype("skip_connect"))
    assert timer.peer_ms() == timer.reference_calm_ms and ms == pytest.approx(
        timer.ratio(one_op_genotype("skip_connect")) * timer.peer_ms())
    restored = CalmLatency(LAT, threads=1)
    restored.load_state_dict(timer.state_dict())
    assert restored.reference == peer and restored.peer_ms() == timer.peer_ms()
    assert CalmLatency(LAT, threads=1).peer_ms() is None  # a genotype reference is no peer


def test_calm_latency_scales_ratios_by_the_calmest_reference(monkeypatch) -> None:
    from gasnas.latency import isolated
    from gasnas.latency.sampling import genotype_signature

    timings = iter([isolated.IsolatedTiming([10.0, 12.0]),  # first net: the reference
                    isolated.IsolatedTiming([6.0, 9.0], [12.0, 15.0]),  # a slow phase: ratio 0.55
                    isolated.IsolatedTiming([4.0], [8.0])])  # a calmer phase for the reference
    calls = []

    def fake(genotype, lat_cfg, threads, rounds, reference):
        calls.append(reference)
        return next(timings)

    monkeypatch.setattr(isolated, "measure_genotype_isolated", fake)
    calm = isolated.CalmLatency(LAT, threads=1, rounds=2)
    a, b, c = (one_op_genotype(op) for op in ("skip_connect", "conv_3x3", "sep_conv_3x3"))
    assert calm.measure(a) == 10.0 and calls[0] is None
    assert calm.measure(a) == 10.0 and len(calls) == 1  # known genotype: not timed again
    assert calm.measure(b) == pytest.approx(5.5)
    assert genotype_signature(calls[1]) == genotype_signature(a)  # timed beside the reference
    assert calm.measure(c) == pytest.approx(4.0)
    assert calm.ms(genotype_signature(b)) == pytest.approx(0.55 * 8.0)  # re-scaled by the calmer phase
    restored = isolated.CalmLatency(LAT, threads=1)
    restored.load_state_dict(json.loads(json.dumps(calm.state_dict())))
    assert restored.ms(genotype_signature(a)) == pytest.approx(8.0)


def test_search_timers_share_one_interface() -> None:
    """search.measure_isolated picks the timer; the in-process one times here, leaves the global
    RNG alone, has no reference (ratio None) and reports what the epoch logged."""
    from gasnas.latency.isolated import CalmLatency
    from gasnas.latency.timers import InProcessLatency, derived_net_timer

    assert isinstance(derived_net_timer(LAT, 1, True, 2), CalmLatency)
    timer = derived_net_timer(LAT, 1, False, 2)
    assert isinstance(timer, InProcessLatency)
    state = torch.random.get_rng_state()
    ms = timer.measure(one_op_genotype("conv_3x3"))
    assert 0 < ms < 10_000 and torch.equal(torch.random.get_rng_state(), state)
    assert timer.ratio(one_op_genotype("conv_3x3")) is None
    assert timer.final_ms(7.5, 0.5) == 7.5 and timer.peer_ms() is None and timer.state_dict() == {"peer_ms": None}
    calm = CalmLatency(LAT, threads=1)
    assert calm.final_ms(7.5, None) == 7.5 and calm.final_ms(7.5, 0.5) == 7.5  # no reference timed yet
    calm.reference_calm_ms = 8.0
    assert calm.final_ms(7.5, 0.5) == 4.0


# --------------------------------------------------------------------------- sampling, validate


def test_spanning_genotypes_span_and_skip_excluded(table: LatencyTable) -> None:
    est = LatencyEstimator(SPACE, CLASSES, table, SIZE, LAT, calibrated=False)
    gs = spanning_genotypes(est, 12, seed=3)
    assert [genotype_signature(g) for g in gs] == [genotype_signature(g) for g in spanning_genotypes(est, 12, seed=3)]
    op_ms = [est.predict(g) - est.raw_fixed_ms for g in gs]
    assert max(op_ms) > 3 * min(op_ms)
    for g in gs:
        for cell in g.cells:
            assert [d for _, d, _ in cell.edges] == [0, 0, 1, 1]
            assert all(op != "none" for _, _, op in cell.edges)
    skip = {genotype_signature(gs[0])}
    assert not skip & {genotype_signature(g) for g in spanning_genotypes(est, 12, seed=3, exclude=skip)}


def test_rank_statistics() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_calibrate_stores_record(fresh_table: LatencyTable) -> None:
    rec = calibrate(fresh_table, SPACE, CLASSES, LAT, samples=4, rounds=1, progress=False)
    assert fresh_table.calibration == [rec]
    assert len(rec["stage_scale"]) == 3 and len(rec["fitted_on"]) == 4
    assert all(n["measured_ms"] > 0 for n in rec["fitted_on"])
    again = calibrate(fresh_table, SPACE, CLASSES, LAT, samples=3, rounds=1, progress=False)
    assert fresh_table.calibration == [again]  # same scope: replaced


# --------------------------------------------------------------------------- timing helpers


def test_multi_input_runner_and_onnxruntime_items() -> None:
    layout = space_layout(SPACE, CLASSES, SIZE)
    ort_cfg = dataclasses.replace(LAT, backend="onnxruntime")
    for item in (layout.stem, layout.cells[1].skeleton, layout.head, OpItem("skip_connect", 4, 6, 8, 8, 1),
                 layout.cells[1].edges[0].item("dil_sep_conv_3x3_r2")):
        assert measure_item(item, ort_cfg) > 0
    module, inputs = layout.head.build()
    out = make_runner(module, SIZE, inputs=inputs, threads=1)()
    assert tuple(out.shape) == (1, CLASSES, *SIZE)


def test_quiet_policy_keeps_lowest_and_counts() -> None:
    values = iter([5.0, 3.0, 4.0])
    q = Quiet(threshold=-1.0, max_wait_s=0.0, retries=2)  # every moment "busy": all retries used
    assert q.measure(lambda: next(values)) == 3.0
    assert q.summary()["measurements"] == 1
    with CpuWatch() as w:
        sum(range(1000))
    assert w.foreign_cores is None or w.foreign_cores >= 0


def test_parse_size() -> None:
    assert parse_size("360x480") == [360, 480]
    for bad in ("360", "x480", "0x10", "axb", "1x2x3"):
        with pytest.raises(GasnasError, match="HxW"):
            parse_size(bad)


# --------------------------------------------------------------------------- CLI


def _space_yaml(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "data: {num_classes: 3}\n"
        "space: {stem_channels: [4, 4, 8], stage_channels: [8, 16, 16], cells_per_stage: [1, 1, 1], nodes: 2}\n"
        "latency: {threads: 1, warmup: 0, repeats: 1}\n")
    return cfg


def test_cli_build_validate_end_to_end(tmp_path: Path, capsys) -> None:
    cfg = _space_yaml(tmp_path)
    lut = tmp_path / "lut.json"
    rc = main(["latency", "build", "--space", str(cfg), "--input", "32x48", "--device", "cpu",
               "--threads", "1", "--out", str(lut), "--rounds", "1", "--calibrate", "3", "--no-progress"])
    assert rc == 0 and lut.is_file()
    data = json.loads(lut.read_text())
    assert data["env"]["threads"] == 1 and len(data["calibration"]) == 1
    assert "stem_H32_W48_C4-4-8_P32x64" in data["entries"]  # padded to the stride (32)
    out = tmp_path / "val"
    rc = main(["latency", "validate", "--lut", str(lut), "--config", str(cfg), "--input", "32x48",
               "--samples", "5", "--rounds", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "validate.json").read_text())
    for key in ("spearman", "pearson", "mape_pct"):
        assert key in report["metrics"] and key in report["raw_metrics"]
    assert report["samples"] == 5 and report["calibrated"] is True
    assert report["noise_floor"]["nets"] == 5 and "slowest_fastest_ratio" in report
    assert (out / "validate.png").read_bytes()[:4] == b"\x89PNG"
    assert "spearman" in capsys.readouterr().out
    # refit the calibration on other nets measured in the same passes; it is saved in the LUT
    rc = main(["latency", "validate", "--lut", str(lut), "--config", str(cfg), "--input", "32x48",
               "--samples", "3", "--rounds", "1", "--recalibrate", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "validate.json").read_text())
    assert report["calibration"]["fitted_in_this_session"] and report["calibration"]["fitted_on"] == 2
    assert len(json.loads(lut.read_text())["calibration"][0]["fitted_on"]) == 2
    rc = main(["latency", "calibrate", "--lut", str(lut), "--config", str(cfg), "--input", "32x48",
               "--samples", "3", "--rounds", "1", "--no-progress"])
    assert rc == 0 and len(json.loads(lut.read_text())["calibration"][0]["fitted_on"]) == 3


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    cfg = _space_yaml(tmp_path)
    assert main(["latency", "build", "--config", str(cfg), "--input", "32by48", "--out", str(tmp_path / "x.json")]) == 2
    assert "--input" in capsys.readouterr().err
    lut = tmp_path / "lut.json"
    assert main(["latency", "build", "--config", str(cfg), "--input", "32x48", "--out", str(lut),
                 "--rounds", "1", "--calibrate", "0", "--no-progress"]) == 0
    data = json.loads(lut.read_text())
    data["env"]["device_name"] = "A Different CPU"
    lut.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["latency", "validate", "--lut", str(lut), "--config", str(cfg), "--input", "32x48",
                 "--samples", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "device_name" in err and str(lut) in err and err.count("\n") == 1
    assert main(["latency", "validate", "--lut", str(tmp_path / "nope.json")]) == 2


def test_cuda_timing_uses_events_and_records_kernel_settings(monkeypatch) -> None:
    """On CUDA a run is timed by CUDA events (the GPU's clock, not the launch time on the host),
    and a table's environment records cudnn.benchmark and TF32; faked here, so it runs on a CPU."""
    from gasnas.latency import timing

    ticks = iter(range(100))

    class FakeEvent:
        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing
            self.t = None

        def record(self) -> None:
            self.t = next(ticks)

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, end: FakeEvent) -> float:
            return 10.0 * (end.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    calls = []
    t = timing.time_callable(lambda: calls.append(1), warmup=2, repeats=3, device="cuda")
    assert len(calls) == 5 and t.runs == 3 and t.median_ms == 10.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Fake GPU")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    env = timing.environment("cuda:0", 1)
    assert env["device_name"] == "Fake GPU" and env["cudnn_benchmark"] is True and "tf32" in env
    assert "cudnn_benchmark" not in timing.environment("cpu", 1)


def test_drift_corrected_takes_out_a_slow_round() -> None:
    """Round 2 runs every net 1.5x slow and round 3 slows net b alone: the drift goes, b's own
    outlier is outvoted, and a single round passes through."""
    from gasnas.latency.timing import drift_corrected

    per = {"a": [10.0, 15.0, 10.0], "b": [20.0, 30.0, 40.0], "c": [5.0, 7.5, 5.0]}
    got = drift_corrected(per)
    assert got == {"a": pytest.approx(10.0), "b": pytest.approx(20.0), "c": pytest.approx(5.0)}
    assert drift_corrected({"a": [3.0], "b": [4.0]}) == {"a": pytest.approx(3.0), "b": pytest.approx(4.0)}


def test_paired_ratio_is_the_median_ratio_within_rounds() -> None:
    """A slow round slows both nets alike and cancels; one net's own slow round is outvoted."""
    from gasnas.latency.timing import paired_ratio

    got = paired_ratio([8.0, 16.0, 9.0, 8.0], [10.0, 20.0, 30.0, 10.0])
    assert got["median"] == pytest.approx(0.8) and got["rounds"] == 4
    assert got["q1"] == pytest.approx(0.675) and got["q3"] == pytest.approx(0.8)
    assert paired_ratio([3.0], [4.0]) == {"median": 0.75, "q1": 0.75, "q3": 0.75, "rounds": 1}
