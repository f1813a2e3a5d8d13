"""Benchmark drivers: the supernet-step benchmark's baseline (a DARTS mixed op that computes
`none` too, and the same function as the fast supernet: benchmarks/supernet_step.py compares their
speed); benchmarks/camvid_vs_lraspp.py run end to end with its `gasnas` commands replaced by a fake
that writes the files they would write (the in-process latency timings run for real, at 32x48)."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import make_camvid, write_png
from torch.overrides import TorchFunctionMode

from gasnas.config import SpaceConfig
from gasnas.data.classes import CAMVID_CLASSES
from gasnas.space.cell import edge_index
from gasnas.space.genotype import CellGene, Genotype
from gasnas.space.network import plan_cells

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import camvid_vs_lraspp as camvid_driver  # noqa: E402
import op_ranking  # noqa: E402
import search_convergence  # noqa: E402
import supernet_step  # noqa: E402
import train_throughput  # noqa: E402


class CountZeroMul(TorchFunctionMode):
    """Counts x.mul(0.0): DARTS' Zero op."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.mul and len(args) == 2 and isinstance(args[1], float) and args[1] == 0.0:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_darts_baseline_computes_none_and_matches_fast() -> None:
    torch.manual_seed(0)
    fast = supernet_step.make(True).eval()
    naive = supernet_step.make(False).eval()
    skips = supernet_step.make(False, darts_none=False).eval()
    naive.load_state_dict(fast.state_dict())
    skips.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 96)
    mixed_ops = sum(len(cell.mixed) for cell in naive.cells)
    with torch.no_grad():
        with CountZeroMul() as counted:
            y_naive = naive(x)
        assert counted.calls == mixed_ops  # one Zero per mixed op (the default space has `none`)
        with CountZeroMul() as counted:
            y_skips = skips(x)
        assert counted.calls == 0
        y_fast = fast(x)
    assert y_naive.shape == y_fast.shape == (2, 11, 64, 96)
    torch.testing.assert_close(y_naive, y_fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_skips, y_naive, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- camvid_vs_lraspp driver


TINY_SPACE = SpaceConfig(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1],
                         head_channels=8)
HEX64 = re.compile(r"[0-9a-f]{64}")


def tiny_genotype(path: Path, op: str = "conv_3x3") -> Path:
    edges = edge_index(TINY_SPACE.nodes)
    cells = [CellGene(plan.reduction, [(*edges[e], op if e % 2 else "skip_connect") for e in (0, 1, 2, 3)])
             for plan in plan_cells(TINY_SPACE)]
    g = Genotype(TINY_SPACE, len(CAMVID_CLASSES), cells)
    g.predicted_latency_ms = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    g.save(path)
    return path


def _opt(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _fake_gasnas(calls: list[list[str]]):
    """Writes the files each `gasnas` command would write (nothing trained or evaluated)."""
    def run(args: list[str], lock: str | None) -> float:
        calls.append(list(args))
        sets = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
        if args[0] == "search":
            path = tiny_genotype(Path(sets["out_dir"]) / sets["name"] / "genotype.json")
            g = Genotype.load(path)
            g.provenance["target_ms"] = 27.5  # what a search with --target-ratio records
            g.save(path)
        elif args[0] == "train":
            run_dir = Path(_opt(args, "--run-dir"))
            epochs, every = int(sets["train.epochs"]), int(sets["train.eval_every"])
            top = 0.6 if "--genotype" in args else 0.5
            rows = [{"epoch": e, "loss": 2.0 / e, **({"val_miou": top * e / epochs} if e % every == 0 else {})}
                    for e in range(1, epochs + 1)]
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run_dir / "best.pt").write_bytes(run_dir.name.encode())
            (run_dir / "last.pt").write_bytes(b"last")
        elif args[0] == "eval":
            tta = "--flip" in args
            base = 0.6 if "gasnas" in _opt(args, "--checkpoint") else 0.5
            iou = [base + (0.02 if tta else 0.0)] * len(CAMVID_CLASSES)
            iou[-1] = None  # a class absent from the split
            Path(_opt(args, "--json")).write_text(json.dumps(
                {"miou": base + (0.02 if tta else 0.0), "pixel_acc": 0.9, "mean_acc": 0.7, "iou": iou,
                 "class_names": CAMVID_CLASSES, "flip": tta}))
        elif args[0] == "predict":
            out = Path(_opt(args, "--out"))
            for image in args[args.index("--out") + 2:]:
                write_png(out / f"{Path(image).stem}_overlay.png", np.full((24, 32, 3), 128, np.uint8))
        else:
            raise AssertionError(f"unexpected command {args}")
        return 0.5
    return run


def _camvid_argv(tmp_path: Path, out: Path) -> list[str]:
    root = make_camvid(tmp_path / "camvid", {"train": 2, "val": 4})
    return ["--config", "camvid", "--out", str(out), "--set", f"data.root={root}",
            "--set", "latency.input_size=[32,48]", "--input", "32x48", "--threads", "1", "--rounds", "1",
            "--repeats", "1", "--train-epochs", "4", "--eval-every", "2"]


def test_camvid_driver_budget_search_train_eval_time_and_resume(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "bench"
    calls: list[list[str]] = []
    monkeypatch.setattr(camvid_driver, "run_gasnas", _fake_gasnas(calls))
    argv = _camvid_argv(tmp_path, out)
    assert camvid_driver.main(argv) == 0

    kinds = [c[0] for c in calls]
    assert kinds == ["search", "train", "train", "eval", "eval", "eval", "eval", "predict", "predict"]
    search = calls[0]
    assert _opt(search, "--target-ratio") == "0.8" and "--target-ms" not in search  # the search times LR-ASPP
    trains = calls[1:3]
    assert "--genotype" in trains[0] and _opt(trains[1], "--peer") == camvid_driver.PEER
    for c in trains:  # the same recipe, epochs and overrides for both
        assert _opt(c, "-c") == "camvid" and "train.epochs=4" in c and "train.eval_every=2" in c
        assert any(s.startswith("data.root=") for s in c)
    assert sum("--flip" in c for c in calls[3:7]) == 2
    assert len(calls[7]) - calls[7].index("--out") - 2 == 3  # three val images per net

    s = json.loads((out / "summary.json").read_text())
    assert s["genotype"]["source"] == "searched" and HEX64.fullmatch(s["genotype"]["sha256"])
    assert s["genotype"]["path"] == str(out / "search" / "genotype.json")
    assert s["budget"]["target_ratio"] == 0.8 and s["budget"]["target_ms"] == 27.5  # read from the genotype
    assert s["train_epochs"] == 4 and s["tta"] == {"flip": True, "scales": [0.75, 1.0, 1.25, 1.5]}
    hashes = set()
    for name in ("gasnas", "lraspp"):
        m = s["models"][name]
        assert HEX64.fullmatch(m["checkpoint"]["sha256"]) and Path(m["checkpoint"]["path"]).is_file()
        hashes.add(m["checkpoint"]["sha256"])
        assert m["epochs"] == 4 and m["best_epoch"] == 4 and m["train_wall_s"] == 0.5
        assert m["val_miou_tta"] == pytest.approx(m["val_miou_single"] + 2.0)
        assert len(m["per_class_iou_single"]) == len(CAMVID_CLASSES)
        assert m["per_class_iou_single"][CAMVID_CLASSES[-1]] is None
        assert all(m["latency_ms"][b] > 0 for b in ("torch", "onnxruntime")) and not m["latency_errors"]
        assert m["params_m"] > 0 and m["gflops"] > 0
    assert len(hashes) == 2
    c = s["comparison"]
    assert c["miou_delta_single"] == pytest.approx(10.0) and c["miou_delta_tta"] == pytest.approx(10.0)
    for b in ("torch", "onnxruntime"):
        g, p = s["models"]["gasnas"]["latency_ms"][b], s["models"]["lraspp"]["latency_ms"][b]
        assert c["latency_ratio"][b] == pytest.approx(g / p)
    assert c["params_ratio"] == pytest.approx(s["models"]["gasnas"]["params_m"] / s["models"]["lraspp"]["params_m"])
    assert s["latency"]["input_size"] == [32, 48] and s["latency"]["threads"] == 1
    assert set(s["goal"]["checks"]) and isinstance(s["goal"]["passed"], bool)
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "overlays" / "side_by_side.png").stat().st_size > 1000
    assert len(s["files"]["overlays"]) == 1 + 2 * 3
    md = (out / "summary.md").read_text()
    assert "| gasnas | 60.0 | 62.0 |" in md and "| lraspp | 50.0 | 52.0 |" in md

    calls.clear()

    def no_timing(*a, **k):
        raise AssertionError("the timing stages should have been skipped")

    monkeypatch.setattr(camvid_driver, "time_nets", no_timing)
    assert camvid_driver.main(argv) == 0
    assert calls == []
    assert json.loads((out / "summary.json").read_text())["models"] == s["models"]


def test_camvid_driver_given_genotype_needs_no_budget_and_guards_its_folder(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "bench"
    calls: list[list[str]] = []
    monkeypatch.setattr(camvid_driver, "run_gasnas", _fake_gasnas(calls))

    def fake_timing(models, size, backends, threads, rounds, repeats):
        # per round: the machine slows x2 in round 2; LR-ASPP alone has a slow round 3. Paired
        # per-round ratios 0.8, 0.8, 0.3 (median 0.8); the ratio of the medians would be 9/20.
        ms = {"gasnas": [8.0, 16.0, 9.0], "lraspp": [10.0, 20.0, 30.0]}
        return {n: {b: {"status": "ok", "median_ms": statistics.median(ms[n]) / (2 if b == "onnxruntime" else 1),
                        "round_medians_ms": [v / (2 if b == "onnxruntime" else 1) for v in ms[n]]}
                    for b in backends} for n in models}

    monkeypatch.setattr(camvid_driver, "time_nets", fake_timing)
    geno = tiny_genotype(tmp_path / "given.json")
    argv = [*_camvid_argv(tmp_path, out), "--genotype", str(geno)]
    assert camvid_driver.main(argv) == 0
    assert [c[0] for c in calls][:2] == ["train", "train"]
    assert _opt(calls[0], "--genotype") == str(geno)
    s = json.loads((out / "summary.json").read_text())
    assert s["genotype"]["source"] == str(geno) and s["search"] is None and s["budget"]["target_ms"] is None
    assert s["comparison"]["latency_ratio"] == {"torch": pytest.approx(0.8), "onnxruntime": pytest.approx(0.8)}
    assert s["comparison"]["latency_ratio_rounds"]["torch"] == {
        "median": pytest.approx(0.8), "q1": pytest.approx(0.55), "q3": pytest.approx(0.8), "rounds": 3}
    assert s["goal"]["checks"]["latency_ratio_torch_at_most_0.8"]
    assert "torch 0.80 [0.55–0.80]" in (out / "summary.md").read_text()

    other = tiny_genotype(tmp_path / "other.json", op="sep_conv_3x3")
    with pytest.raises(SystemExit, match="use another --out"):
        camvid_driver.main([*_camvid_argv(tmp_path, out), "--genotype", str(other)])


def test_train_throughput_reports_both_nets_and_the_schedule(tmp_path: Path, single_thread) -> None:
    from gasnas.config import load_config
    from gasnas.space.genotype import derive_genotype
    from gasnas.space.supernet import Supernet

    cfg = load_config("demo")
    genotype = derive_genotype(Supernet(cfg.space, cfg.data.num_classes, fast=False))
    path = genotype.save(tmp_path / "g.json")
    out = tmp_path / "throughput.json"
    assert train_throughput.main(["--config", "demo", "-g", str(path), "--set", "data.crop_size=[32,48]",
                                  "--set", "train.batch_size=2", "--threads", "1", "--rounds", "2",
                                  "--steps", "1", "--warmup", "0", "--n-train", "10", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    peer = "lraspp_mobilenet_v3_large"
    assert set(report["images_per_s"]) == {"gasnas", peer}
    assert all(len(v) == 2 and min(v) > 0 for v in report["round_images_per_s"].values())
    assert report["ratio_gasnas_to_peer"] == report["images_per_s"]["gasnas"] / report["images_per_s"][peer]
    epochs = load_config("demo").train.epochs
    assert report["schedule_minutes"]["gasnas"] == pytest.approx(epochs * 10 / report["images_per_s"]["gasnas"] / 60)



# --------------------------------------------------------------------------- search_convergence


def test_seed_agreement_and_its_cross_cell_reference() -> None:
    """Two seeds whose first two (stage-0 normal) cells are swapped: they agree on every kept
    edge, on half the (cell, edge, op) triples of those cells, and fully against the other cell."""
    space = SpaceConfig(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[2, 1, 1],
                        head_channels=8)
    edges = edge_index(space.nodes)

    def geno(ops: list[str]) -> dict:
        cells = [CellGene(p.reduction, [(*edges[e], op) for e in (0, 1, 2, 3)]) for p, op in zip(plan_cells(space), ops)]
        return Genotype(space, 11, cells).to_dict()

    a = geno(["conv_3x3", "sep_conv_3x3", "conv_3x3", "conv_3x3", "conv_3x3", "conv_3x3"])
    b = geno(["sep_conv_3x3", "conv_3x3", "conv_3x3", "conv_3x3", "conv_3x3", "conv_3x3"])
    assert search_convergence.agreement([a, b], with_op=False) == 1.0
    assert search_convergence.agreement([a, b]) == pytest.approx(4 / 6)  # 4 of 6 cells alike
    assert search_convergence.cross_cell_agreement([a, b]) == 1.0  # cells 0 and 1 match crosswise
    assert search_convergence.cross_cell_agreement([a, a]) == 0.0  # and a seed's two cells differ


def test_op_ranking_path_swaps_one_edge_and_drops_the_rest(tmp_path: Path, capsys) -> None:
    """The genotype as a supernet path: kept edges run their op (the swapped one its new op),
    dropped edges nothing; the supernet runs it. A folder without a finished search is refused."""
    from gasnas.space.supernet import Supernet

    space = SpaceConfig(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[2, 1, 1],
                        head_channels=8)
    edges = edge_index(space.nodes)
    cells = [CellGene(p.reduction, [(*edges[e], "conv_3x3") for e in range(len(edges)) if edges[e][0] < 2][:2 * space.nodes])
             for p in plan_cells(space)]
    genotype = Genotype(space, 5, cells)
    ops = list(space.ops)
    (src, dst, _) = cells[1].edges[0]
    path = op_ranking.path_for(genotype, ops, ((1, src, dst), "sep_conv_3x3"))
    kept = {edges.index((s, d)) for s, d, _ in cells[0].edges}
    assert [i for i in path[0].index if i != -1] == [ops.index("conv_3x3")] * len(kept)
    assert all((path[0].index[e] == -1) == (e not in kept) for e in range(len(edges)))
    assert path[1].index[edges.index((src, dst))] == ops.index("sep_conv_3x3")
    assert path[1].weights.sum() == len(cells[1].edges)
    net = Supernet(space, 5)
    losses = op_ranking.image_losses(net, path, [(torch.randn(2, 3, 32, 48), torch.randint(0, 5, (2, 32, 48)))], 255)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert op_ranking.main([str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err


def test_op_ranking_cross_seed_agreement() -> None:
    """On the edges two seeds share: the share of equal lowest-loss and α ops, the share chance
    gives from each seed's own op counts, and Spearman's ρ of the swapped ops' losses (the
    genotypes' own ops left out)."""
    def run(name: str, rows: list[tuple[int, int, int, str, str, dict]]) -> dict:
        return {"run": f"runs/x/{name}", "edges": [
            {"cell": c, "source": s, "node": n, "loss_op": lo, "alpha_op": ao, "genotype_op": ao, "loss": loss}
            for c, s, n, lo, ao, loss in rows]}

    up = {"sep": 1.0, "r2": 2.0, "r4": 3.0, "conv": 4.0}
    down = {"sep": 4.0, "r2": 3.0, "r4": 2.0, "conv": 1.0}
    a = run("s0", [(0, 0, 2, "sep", "r2", up), (0, 1, 2, "sep", "r4", up), (1, 0, 2, "conv", "conv", up)])
    b = run("s1", [(0, 0, 2, "sep", "r4", up), (0, 1, 2, "r2", "r4", down), (1, 1, 2, "conv", "conv", up)])
    got = op_ranking.cross_seed([a, b])
    (pair,) = got["pairs"]
    assert pair["runs"] == ["s0", "s1"] and pair["shared_edges"] == 2
    assert pair["loss_op"] == pytest.approx(0.5) and pair["alpha_op"] == pytest.approx(0.5)
    assert pair["loss_op_chance"] == pytest.approx(0.5)  # a: sep, sep; b: sep, r2 -> (2 * 1) / 4
    # edge 1: r2 and r4 left out (the genotypes' ops) -> sep/conv ranked alike, rho 1;
    # edge 2: r4 left out -> up vs down over sep, r2, conv: rho -1
    assert pair["loss_spearman"] == pytest.approx(0.0)
    assert got["loss_op"] == pytest.approx(0.5)


def test_one_run_timing_rounds_backends_and_errors(single_thread) -> None:
    """The benchmarks' shared round-robin timing: a median and the round medians per (net,
    backend), a backend that cannot run recorded as an error; search_convergence reads the rounds."""
    from gasnas.latency.timing import time_models

    nets = {"a": torch.nn.Conv2d(3, 4, 3, padding=1).eval(), "b": torch.nn.Conv2d(3, 8, 1).eval()}
    timed = time_models(nets, [16, 24], ("torch", "tensorrt"), threads=1, rounds=2, repeats=1, warmup=0)
    for name in nets:
        ok = timed[name]["torch"]
        assert ok["status"] == "ok" and len(ok["round_medians_ms"]) == 2 and ok["median_ms"] > 0
        assert timed[name]["tensorrt"]["status"] == "error" and timed[name]["tensorrt"]["error"]
    rounds = search_convergence.time_nets(nets, [16, 24], 1, rounds=3, repeats=1)
    assert set(rounds) == {"a", "b"} and all(len(v) == 3 and min(v) > 0 for v in rounds.values())
