"""Search vs random: the latency-matched random sampler, the statistics, the resumable driver.

Latency tables here are made up (deterministic ms per key, nothing timed); the driver's `gasnas`
commands are replaced by a fake that writes the files they would write."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from gasnas.config import SpaceConfig, load_config
from gasnas.engine.stats import bootstrap_ci, mean_std, percentile_of, permutation_p, smallest_p
from gasnas.errors import GasnasError
from gasnas.latency import LatencyEstimator, LatencyTable
from gasnas.latency.keys import space_layout
from gasnas.latency.sampling import genotype_signature, spanning_genotypes
from gasnas.space.cell import edge_index
from gasnas.space.genotype import CellGene, Genotype
from gasnas.space.network import plan_cells
from gasnas.space.random_genotypes import _Tilted, cheapest_genotype, sample_matched

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import search_vs_random as driver  # noqa: E402

SPACE = SpaceConfig(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1], head_channels=8)
CLASSES, SIZE = 3, [32, 48]


def made_up_table(space: SpaceConfig = SPACE) -> LatencyTable:
    entries = {it.key: 0.05 + (zlib.crc32(it.key.encode()) % 1000) / 1000
               for it in space_layout(space, CLASSES, SIZE).items()}
    env = {"device": "cpu", "threads": 1, "backend": "torch", "dtype": "fp32", "input_sizes": [SIZE]}
    return LatencyTable(entries, env)


@pytest.fixture(scope="module")
def est() -> LatencyEstimator:
    return LatencyEstimator(SPACE, CLASSES, made_up_table(), None)


# --------------------------------------------------------------------------- sampler


def _spread(est: LatencyEstimator) -> list[float]:
    return sorted(est.predict(g) for g in spanning_genotypes(est, 9, seed=1))


@pytest.mark.parametrize("where", [4, 1])  # the middle of the range, and its cheap end (needs a tilt)
def test_matched_genotypes_are_valid_distinct_in_window_and_deterministic(est, where: int) -> None:
    target, tol = _spread(est)[where], 0.03
    gs = sample_matched(est, 8, target, tol, seed=5)
    assert len(gs) == 8 and len({genotype_signature(g) for g in gs}) == 8
    for i, g in enumerate(gs):
        back = Genotype.from_dict(json.loads(json.dumps(g.to_dict())))
        assert genotype_signature(back) == genotype_signature(g)
        assert target * (1 - tol) <= est.predict(g) <= target * (1 + tol)
        assert g.predicted_latency_ms == pytest.approx(est.predict(g))
        for cell in g.cells:
            assert [d for _, d, _ in cell.edges] == [0, 0, 1, 1]
            assert len({s for s, d, _ in cell.edges if d == 1}) == 2
            assert all(op != "none" for _, _, op in cell.edges)
        p = g.provenance
        assert (p["sampler"], p["seed"], p["index"], p["target_ms"], p["tolerance"]) == \
            ("random_matched", 5, i, target, tol)
        assert "bias" in p
    again = sample_matched(est, 8, target, tol, seed=5)
    assert [genotype_signature(g) for g in again] == [genotype_signature(g) for g in gs]
    other = sample_matched(est, 8, target, tol, seed=6)
    assert [genotype_signature(g) for g in other] != [genotype_signature(g) for g in gs]
    cheapest = cheapest_genotype(est)
    assert all(cheapest.predicted_latency_ms <= est.predict(g) + 1e-6 for g in gs)


def test_impossible_window_is_a_one_line_error(est) -> None:
    low = cheapest_genotype(est).predicted_latency_ms
    with pytest.raises(GasnasError, match=r"no genotype .* predicted in") as exc:
        sample_matched(est, 3, low * 0.5, 0.03)
    assert "\n" not in str(exc.value) and f"{low * 0.5 * 0.97:.3f}" in str(exc.value)
    with pytest.raises(GasnasError, match=r"only \d+ of 1000 distinct genotypes found in .* after 50 draws") as exc:
        sample_matched(est, 1000, low, 1e-6, max_draws=50)
    assert "\n" not in str(exc.value)


def test_cheapest_takes_the_cheapest_op_of_the_cheapest_edges(est) -> None:
    g = cheapest_genotype(est)
    Genotype.from_dict(g.to_dict())
    assert g.provenance["sampler"] == "cheapest"
    assert g.predicted_latency_ms == pytest.approx(est.predict(g))
    assert all(g.predicted_latency_ms <= est.predict(s) + 1e-6 for s in spanning_genotypes(est, 12, seed=0))


ONE_CELL = SpaceConfig(ops=["none", "skip_connect", "conv_3x3", "max_pool_3x3"], stem_channels=[4, 4, 8],
                      stage_channels=[8], cells_per_stage=[1], head_channels=8)


def _every_genotype(space: SpaceConfig, max_skip: int | None = None) -> list[Genotype]:
    """Every derivable genotype of a one-cell, two-node space (at most `max_skip` kept skips)."""
    plan, edges = plan_cells(space)[0], edge_index(space.nodes)
    usable = [op for op in space.ops if op != "none"]
    every = []
    for pair in itertools.combinations([2, 3, 4], 2):
        for ops in itertools.product(usable, repeat=4):
            if max_skip is not None and ops.count("skip_connect") > max_skip:
                continue
            cell = CellGene(plan.reduction, [(*edges[e], op) for e, op in zip([0, 1, *pair], ops)])
            every.append(Genotype(space, CLASSES, [cell]))
    return every


@pytest.mark.parametrize("max_skip", [None, 0, 1, 2])
def test_skip_capped_law_is_exact_against_enumeration(max_skip: int | None) -> None:
    """The sampler's exact passes (range, E_θ[x], the cheapest net) agree with brute force over
    every genotype with at most `max_skip` skips, and its draws respect the cap."""
    est = LatencyEstimator(ONE_CELL, CLASSES, made_up_table(ONE_CELL), None)
    tilt = _Tilted(est, max_skip)
    every = _every_genotype(ONE_CELL, max_skip)
    assert len(every) == 3 * {None: 81, 0: 16, 1: 48, 2: 72}[max_skip]
    x = np.array([est.predict(g) for g in every]) - tilt.constant
    assert tilt.x_range() == pytest.approx((x.min(), x.max()), abs=1e-5)
    for theta in (-3.0, 0.0, 0.7, 5.0):
        w = np.exp(-theta * (x - x.min()))
        assert tilt.mean_x(theta) == pytest.approx(float((w * x).sum() / w.sum()), abs=1e-5)
    cheapest = cheapest_genotype(est, max_skip)
    assert cheapest.predicted_latency_ms == pytest.approx(x.min() + tilt.constant, abs=1e-5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        cells, drawn_x = tilt.draw(1.0, rng)
        skips = sum(op == "skip_connect" for _, _, op in cells[0].edges)
        assert max_skip is None or skips <= max_skip
        assert drawn_x + tilt.constant == pytest.approx(est.predict(Genotype(ONE_CELL, CLASSES, cells)), abs=1e-5)


@pytest.mark.parametrize("max_skip", [None, 1])
def test_accepted_genotypes_are_uniform_over_the_window(max_skip: int | None) -> None:
    """One cell: every genotype enumerable. A window at the cheap end needs a tilt; the accepted
    genotypes must still be (about) equally frequent, and none over the skip cap."""
    est = LatencyEstimator(ONE_CELL, CLASSES, made_up_table(ONE_CELL), None)
    ms = sorted((est.predict(g), genotype_signature(g)) for g in _every_genotype(ONE_CELL, max_skip))
    lo_ms, hi_ms = ms[2][0], ms[7][0]  # a window around the 3rd..8th cheapest
    target = (lo_ms + hi_ms) / 2
    tol = (hi_ms - lo_ms) / 2 / target * 1.0001
    inside = {s for m, s in ms if target * (1 - tol) <= m <= target * (1 + tol)}
    assert len(inside) >= 4
    counts = dict.fromkeys(inside, 0)
    draws = 300
    for seed in range(draws):
        g = sample_matched(est, 1, target, tol, seed=seed, max_skip=max_skip)[0]
        assert g.provenance["max_skip_per_cell"] == max_skip
        counts[genotype_signature(g)] += 1  # KeyError: a genotype outside the window or over the cap
    expected = draws / len(inside)
    assert all(0.4 * expected <= c <= 1.8 * expected for c in counts.values()), counts


def test_uncapped_draws_break_the_cap_and_capped_ones_do_not(est) -> None:
    """Why the cap matters: uniform latency-matched draws hold cells with several skips, which
    derivation (search.max_skip_per_cell) never gives; with the cap none does."""
    target = _spread(est)[2]

    def most_skips(gs: list[Genotype]) -> int:
        return max(sum(op == "skip_connect" for _, _, op in c.edges) for g in gs for c in g.cells)

    assert most_skips(sample_matched(est, 6, target, 0.05, seed=1)) >= 2
    assert most_skips(sample_matched(est, 6, target, 0.05, seed=1, max_skip=1)) <= 1
    assert most_skips(sample_matched(est, 6, target, 0.05, seed=1, max_skip=0)) == 0


# --------------------------------------------------------------------------- statistics


def test_permutation_p_exact_and_monte_carlo() -> None:
    assert permutation_p([3, 4, 5], [0, 1, 2]) == pytest.approx(1 / 20)
    assert permutation_p([0, 1, 2], [3, 4, 5]) == pytest.approx(1.0)
    assert permutation_p([1, 1], [1, 1]) == pytest.approx(1.0)  # every split ties
    assert permutation_p([2, 3], [0, 1]) == pytest.approx(1 / 6)
    a, b = [10.0 + i for i in range(10)], [float(i) for i in range(10)]  # C(20, 10) = 184756: Monte Carlo
    p = permutation_p(a, b, n_perm=2000, seed=0)
    assert p == pytest.approx(1 / 2001)
    assert permutation_p(a, b, n_perm=2000, seed=0) == p
    mixed = permutation_p([5.0, 1, 4, 2, 6, 3, 7, 0, 9, 8], [4.5, 1, 3, 2, 6, 3, 7, 0, 9, 8], n_perm=3000)
    assert 0.2 < mixed < 0.8


@pytest.mark.parametrize("n_a,n_b", [(3, 2), (2, 2), (3, 10), (1, 4), (10, 10)])  # (10, 10): Monte Carlo
def test_smallest_p_is_the_p_of_the_most_extreme_outcome(n_a: int, n_b: int) -> None:
    best = permutation_p([100.0 + i for i in range(n_a)], [float(i) for i in range(n_b)], n_perm=2000)
    assert smallest_p(n_a, n_b, n_perm=2000) == pytest.approx(best)


def test_smallest_p_floor_and_bad_sizes() -> None:
    assert smallest_p(3, 2) == pytest.approx(0.1)  # 3 nets against 2 can never reach p < 0.05
    with pytest.raises(ValueError, match="group sizes"):
        smallest_p(0, 3)


def test_bootstrap_ci_contains_the_truth_and_narrows_with_data() -> None:
    base = [-1.0, -0.5, 0.0, 0.5, 1.0]
    small_a, small_b = [3 + x for x in base], [1 + 2 * x for x in base]  # true difference: 2
    big_a, big_b = small_a * 40, small_b * 40
    d, lo, hi = bootstrap_ci(small_a, small_b, n_boot=4000, seed=0)
    assert d == pytest.approx(2.0) and lo < 2.0 < hi and lo < d < hi
    d2, lo2, hi2 = bootstrap_ci(big_a, big_b, n_boot=4000, seed=0)
    assert lo2 < 2.0 < hi2 and hi2 - lo2 < 0.5 * (hi - lo)
    assert bootstrap_ci(small_a, small_b, n_boot=4000, seed=0) == (d, lo, hi)
    assert bootstrap_ci([5, 5, 5], [2, 2]) == (3.0, 3.0, 3.0)


def test_percentile_and_mean_std() -> None:
    assert percentile_of(10, [1, 2, 3]) == 100.0
    assert percentile_of(0, [1, 2, 3]) == 0.0
    assert percentile_of(3, [1, 2, 3]) == pytest.approx(100 * 2.5 / 3)  # ties count half
    assert percentile_of(2, [2, 2]) == 50.0
    assert mean_std([1, 2, 3]) == (2.0, 1.0)
    assert mean_std([4]) == (4.0, None)
    assert mean_std([]) == (None, None)


# --------------------------------------------------------------------------- driver


def _sets(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")


def _fake_gasnas(lut: Path, est: LatencyEstimator, calls: list[list[str]]):
    def run(args: list[str], lock: str | None) -> float:
        calls.append(list(args))
        sets = _sets(args)
        if args[0] == "search":
            run_dir = Path(args[args.index("--resume") + 1]) if "--resume" in args else \
                Path(sets["out_dir"]) / sets["name"]
            g = spanning_genotypes(est, 1, seed=zlib.crc32(run_dir.name.encode()))[0]
            g.predicted_latency_ms = est.predict(g)
            run_dir.mkdir(parents=True, exist_ok=True)
            g.save(run_dir / "genotype.json")
            shutil.copy(lut, run_dir / "lut.json")
        elif args[0] == "train":
            assert "--resume" not in args
            run_dir = Path(args[args.index("--run-dir") + 1])
            epochs = int(sets["train.epochs"])
            base = 0.5 if "-s" in run_dir.name and not run_dir.name.startswith("random") else 0.4
            miou = base + (zlib.crc32((run_dir.name + sets.get("seed", "0")).encode()) % 100) / 2000
            run_dir.mkdir(parents=True, exist_ok=True)
            rows = [{"epoch": e + 1, "loss": 1.0, "val_miou": miou * (e + 1) / epochs} for e in range(epochs)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run_dir / "last.pt").write_bytes(b"")
        else:
            raise AssertionError(f"unexpected command {args}")
        return 0.01
    return run


def test_driver_runs_every_stage_once_then_resumes_to_nothing(tmp_path: Path, est, monkeypatch, capsys) -> None:
    lut = made_up_table().save(tmp_path / "fixture_lut.json")
    out = tmp_path / "svr"
    calls: list[list[str]] = []
    monkeypatch.setattr(driver, "run_gasnas", _fake_gasnas(lut, est, calls))
    argv = ["--config", "demo", "--out", str(out), "--quick", "--variants", "adjacent", "none", "shared",
            "--seeds-adjacent", "2", "--seeds-other", "1", "--random", "4", "--set", "data.workers=0"]
    (out / "adjacent-gumbel-s1" / "checkpoints").mkdir(parents=True)
    (out / "adjacent-gumbel-s1" / "checkpoints" / "last.pt").write_bytes(b"")  # an interrupted search
    assert driver.main(argv) == 0

    searches = [c for c in calls if c[0] == "search"]
    trains = [c for c in calls if c[0] == "train"]
    assert len(searches) == 4 and len(trains) == 4 + 4 + 1 + 1 + 2
    assert searches[1] == ["search", "--resume", str(out / "adjacent-gumbel-s1"), "--no-progress"]
    first, later = _sets(searches[0]), _sets(searches[2])
    assert "latency.lut" not in first and later["latency.lut"] == str(out / "adjacent-gumbel-s0" / "lut.json")
    assert first["space.ggm.mode"] == "adjacent" and first["search.relaxation"] == "gumbel"
    assert later["space.ggm.mode"] == "none" and later["seed"] == "0" and later["data.workers"] == "0"
    shared = _sets(searches[3])
    assert shared["space.alpha_sharing"] == "shared" and shared["space.ggm.mode"] == "adjacent"
    for c in trains:
        s = _sets(c)
        assert s["data.crop_size"] == "[64,96]" and s["data.eval_size"] == "null" and s["train.epochs"] == "1"
    assert any("--peer" in c and driver.PEER in c for c in trains)
    retrains = [c for c in trains if _sets(c).get("seed") == "1"]
    assert {Path(c[c.index("--run-dir") + 1]).name for c in retrains} == {"adjacent-gumbel-s0-seed1", "random_0-seed1"}
    printed = capsys.readouterr().out
    assert "# random genotypes" in printed and "# latency" in printed

    info = json.loads((out / "random" / "target.json").read_text())
    assert info["max_skip_per_cell"] == 1  # the demo recipe's derivation cap
    for name in [f"random_{i}" for i in range(4)] + ["cheapest"]:
        g = Genotype.load(out / "random" / f"{name}.json")
        assert all(sum(op == "skip_connect" for _, _, op in c.edges) <= 1 for c in g.cells)
        if name != "cheapest":
            assert abs(g.predicted_latency_ms / info["target_ms"] - 1) <= 0.03

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["groups"]) == {"adjacent", "none", "shared"}
    for g in summary["groups"].values():
        assert g["p_smallest"] <= g["p_one_sided"] <= 1.0
        lo, hi = g["delta_vs_random"]["ci95"]
        assert lo <= g["delta_vs_random"]["delta"] <= hi
        assert all(0 <= p <= 100 for p in g["percentile_among_random"])
        assert g["val_miou"]["mean"] is not None and g["measured_ms"]["mean"] > 0 and g["gflops"]["mean"] > 0
    assert summary["groups"]["adjacent"]["n"] == 2 and summary["groups"]["adjacent"]["val_miou"]["std"] is not None
    for n in summary["nets"]:
        if n["kind"] == "peer":
            assert n["skips"] is None
        else:
            path = out / n["name"] / "genotype.json" if n["kind"] == "searched" else out / "random" / f"{n['name']}.json"
            g = Genotype.load(path)
            assert n["skips"] == sum(op == "skip_connect" for c in g.cells for _, _, op in c.edges)
    assert "(at most 1 skip per cell)" in (out / "summary.md").read_text()
    assert len(summary["scatter"]) == 4 + 4 + 1 + 1
    assert {p["kind"] for p in summary["scatter"]} == {"searched", "random", "cheapest", "peer"}
    assert all(math.isfinite(p["ms"]) and 0 <= p["miou"] <= 100 for p in summary["scatter"])
    assert [p["genotype"] for p in summary["training_seed_noise"]["pairs"]] == ["adjacent-gumbel-s0", "random_0"]
    assert summary["training_seed_noise"]["mean_abs_delta"] >= 0
    assert [(o["better"], o["worse"]) for o in summary["ordering"]] == [
        ("adjacent", "none"), ("none", "shared"), ("adjacent", "shared")]  # no `global` searched
    for o in summary["ordering"]:
        assert o["ci95"][0] <= o["delta"] <= o["ci95"][1] and o["p_smallest"] <= o["p_one_sided"] <= 1.0
        sizes = [summary["groups"][o[k]]["n"] for k in ("better", "worse")]
        assert o["p_smallest"] == pytest.approx(smallest_p(*sizes))
    assert "- adjacent > none: " in (out / "summary.md").read_text()
    assert "(smallest possible 0.33)" in (out / "summary.md").read_text()  # 2 searched nets against 1
    assert set(summary["goal"]["by_group"]) == {"adjacent"} and isinstance(summary["goal"]["passed"], bool)
    assert summary["stages"] == {"searches": 4, "trainings": 12, "nets_timed": 10}
    assert "| adjacent | 2 |" in (out / "summary.md").read_text()
    assert (out / "mIoU_vs_latency.png").stat().st_size > 1000

    calls.clear()
    stamp = (out / "random" / "random_0.json").stat().st_mtime_ns

    def no_timing(*a, **k):
        raise AssertionError("latency stage should have been skipped")

    monkeypatch.setattr(driver, "measure_nets", no_timing)
    assert driver.main(argv) == 0
    assert calls == []
    assert (out / "random" / "random_0.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "summary.json").read_text())["scatter"] == summary["scatter"]


def test_driver_quick_overrides_are_valid_config_keys() -> None:
    load_config("demo", driver.QUICK_SETS)
    for sets in driver.VARIANTS.values():
        load_config("camvid", [*sets, "search.relaxation=gumbel", "data.crop_size=[180,240]", "data.eval_size=null"])
