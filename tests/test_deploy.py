"""Deploy: `gasnas export` (ONNX + parity, refusal), `gasnas bench` (JSON, peers, unavailable
backends, bad input), `gasnas predict` (masks, overlays, a corrupt file), on tiny nets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gasnas.cli import main
from gasnas.config import SpaceConfig
from gasnas.errors import GasnasError
from gasnas.space import DerivedNet, Supernet, derive_genotype
from gasnas.space.derived import checkpoint_payload

TINY = SpaceConfig(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1],
                   nodes=2, head_channels=8)
PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    genotype = derive_genotype(Supernet(TINY, num_classes=5))
    genotype.save(root / "genotype.json")
    net = DerivedNet(genotype)
    with torch.no_grad():  # non-trivial BN statistics, so the logits are not all alike
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    meta = {"class_names": list("abcde"), "palette": PALETTE, "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25]}
    torch.save(checkpoint_payload(net, meta), root / "model.pt")
    return {"root": root, "genotype": root / "genotype.json", "checkpoint": root / "model.pt"}


# --------------------------------------------------------------------------- export


def test_export_writes_checked_onnx_with_parity(files: dict[str, Path], capsys) -> None:
    import onnx

    out = files["root"] / "export" / "model.onnx"
    rc = main(["export", "--checkpoint", str(files["checkpoint"]), "--onnx", str(out), "--input", "64x96"])
    text = capsys.readouterr().out
    assert rc == 0
    assert out.is_file()
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["palette"]) == PALETTE and json.loads(props["mean"]) == [0.5] * 3
    assert "onnx.checker: ok" in text
    assert "random 64x96" in text and "synthetic scene" in text
    assert "max |Δlogit|" in text and "argmax agreement" in text and "FAIL" not in text


def test_export_dynamic_checks_a_second_size(files: dict[str, Path], capsys) -> None:
    import onnxruntime as ort

    out = files["root"] / "dyn.onnx"
    img = files["root"] / "real.png"
    from PIL import Image

    from gasnas.deploy.export import synthetic_scene

    Image.fromarray(synthetic_scene(50, 70, seed=3)).save(img)
    rc = main(["export", "--checkpoint", str(files["checkpoint"]), "--onnx", str(out),
               "--input", "64x96", "--dynamic", "--images", str(img)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "96x128" in text and "batch 2" in text and "1 image(s)" in text
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"image": np.random.randn(3, 3, 32, 160).astype(np.float32)})[0]
    assert y.shape == (3, 5, 32, 160)


def test_export_refuses_a_model_that_fails_parity(files: dict[str, Path], capsys, monkeypatch) -> None:
    import gasnas.deploy.export as export

    real = export.ort_session

    class Skewed:  # an "exporter bug": ONNX logits off by 1e-3
        def __init__(self, *a, **k) -> None:
            self.inner = real(*a, **k)

        def run(self, names, feed):
            return [o + 1e-3 for o in self.inner.run(names, feed)]

    monkeypatch.setattr(export, "ort_session", Skewed)
    folder = files["root"] / "refused"
    out = folder / "bad.onnx"
    rc = main(["export", "--checkpoint", str(files["checkpoint"]), "--onnx", str(out), "--input", "64x96"])
    cap = capsys.readouterr()
    assert rc == 2
    assert not out.exists()
    assert not folder.exists() or not any(folder.iterdir())  # no temp file left either
    assert "parity failed" in cap.err and "nothing written" in cap.err
    assert len(cap.err.strip().splitlines()) == 1
    assert "FAIL" in cap.out  # every number is still printed


def test_export_bad_arguments_are_one_line_errors(files: dict[str, Path], capsys) -> None:
    out = str(files["root"] / "x.onnx")
    cases = [
        (["--checkpoint", str(files["root"] / "missing.pt"), "--onnx", out, "--input", "64x96"], "missing.pt"),
        (["--checkpoint", str(files["checkpoint"]), "--onnx", out, "--input", "10x"], "--input '10x'"),
        (["--checkpoint", str(files["checkpoint"]), "--onnx", out, "--input", "64x96", "--images",
          str(files["root"] / "nope.png")], "nope.png"),
    ]
    for args, needle in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not Path(out).exists()


# --------------------------------------------------------------------------- bench


def test_bench_json_is_well_formed(files: dict[str, Path], capsys) -> None:
    out = files["root"] / "bench.json"
    md = files["root"] / "bench.md"
    rc = main(["bench", "--genotype", str(files["genotype"]), "--input", "64x96", "--runs", "2",
               "--warmup", "1", "--threads", "1", "--json", str(out), "--markdown", str(md)])
    text = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["input_size"] == [64, 96] and report["batch"] == 1 and report["runs"] == 2
    (model,) = report["models"]
    assert model["params"] > 0 and model["flops"] > 0 and model["gflops"] == model["flops"] / 1e9
    r = model["results"]["torch"]
    assert r["status"] == "ok" and r["runs"] == 2 and len(r["samples_ms"]) == 2
    assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] * 0.999 and r["fps"] > 0
    assert r["ratio_to_reference"] == pytest.approx(1.0)
    env = report["environment"]
    for key in ("device_name", "threads", "torch_version", "onnxruntime_version", "torchvision_version"):
        assert env[key] is not None, key
    assert env["threads"] == 1
    assert "| gasnas |" in text and "| gasnas |" in md.read_text()


def test_bench_baselines_interleaved_with_unavailable_tensorrt(files: dict[str, Path], capsys) -> None:
    out = files["root"] / "peers.json"
    rc = main(["bench", "--genotype", str(files["genotype"]), "--input", "64x64", "--runs", "2",
               "--warmup", "1", "--baselines", "--backend", "torch,onnxruntime", "--backend",
               "tensorrt", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out.read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["gasnas", "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"]
    assert report["backends"] == ["torch", "onnxruntime", "tensorrt"] and report["interleaved"]
    for m in report["models"]:
        for b in ("torch", "onnxruntime"):
            assert m["results"][b]["status"] == "ok" and m["results"][b]["ratio_to_reference"] > 0
        trt = m["results"]["tensorrt"]
        assert trt["status"] == "unavailable" and trt["reason"]
    assert report["models"][3]["params"] > 30e6  # fcn_resnet50, built without downloaded weights
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4  # header, rule, one row per model: one table
    assert all("unavailable:" in line for line in table[2:])


def test_time_interleaved_is_round_robin() -> None:
    from gasnas.deploy.bench import time_interleaved

    calls: list[str] = []
    runners = [lambda n=n: calls.append(n) for n in "abc"]
    samples = time_interleaved(runners, warmup=1, runs=2)
    assert [len(s) for s in samples] == [2, 2, 2]
    rounds = [calls[i:i + 3] for i in range(0, 9, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # each round: everyone once
    assert rounds[0] != rounds[1]  # and the starting place rotates


@pytest.mark.parametrize("args, needle", [
    (["--backend", "foo"], "--backend 'foo'"),
    (["--input", "10x"], "--input '10x'"),
    (["--dtype", "fp8"], "--dtype 'fp8'"),
    (["--runs", "0"], "--runs 0"),
])
def test_bench_bad_arguments(files: dict[str, Path], capsys, args: list[str], needle: str) -> None:
    assert main(["bench", "--genotype", str(files["genotype"]), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_bench_cuda_without_gpu(files: dict[str, Path], capsys) -> None:
    assert main(["bench", "--genotype", str(files["genotype"]), "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_bench_missing_genotype(files: dict[str, Path], capsys) -> None:
    assert main(["bench", "--genotype", str(files["root"] / "none.json"), "--input", "64x64"]) == 2
    assert "none.json" in capsys.readouterr().err


def test_parse_size() -> None:
    from gasnas.config import parse_size

    assert parse_size("1024x2048") == [1024, 2048] and parse_size([360, 480]) == [360, 480]
    for bad in ("10x", "x10", "0x5", "10*10", "axb", [0, 5], [1, 2, 3], [True, 4]):
        with pytest.raises(GasnasError, match="--input"):
            parse_size(bad)


# --------------------------------------------------------------------------- predict


def test_predict_masks_overlays_and_a_corrupt_file(files: dict[str, Path], capsys) -> None:
    from PIL import Image

    from gasnas.deploy.export import synthetic_scene

    src = files["root"] / "images"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(synthetic_scene(70, 100, 1)).save(src / "a.png")  # not a multiple of 32
    Image.fromarray(synthetic_scene(64, 64, 2)).save(src / "sub" / "b.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    single = files["root"] / "single.jpg"
    Image.fromarray(synthetic_scene(40, 50, 4)).convert("L").save(single)  # greyscale input
    out = files["root"] / "pred"
    rc = main(["predict", "--checkpoint", str(files["checkpoint"]), str(src), str(single),
               "--out", str(out), "--overlay"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "broken.png" in cap.err
    assert sum("broken.png" in line for line in cap.err.splitlines()) == 2  # skip line + final error
    for stem, size in (("a", (100, 70)), ("sub/b", (64, 64)), ("single", (50, 40))):
        mask = Image.open(out / f"{stem}_mask.png")
        assert mask.size == size and mask.mode == "P"
        assert np.asarray(mask).max() < 5
        assert mask.getpalette()[:15] == [v for c in PALETTE for v in c]
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.size == size and overlay.mode == "RGB"
    assert not list(out.glob("broken*"))


def test_predict_missing_input_names_it(files: dict[str, Path], capsys) -> None:
    rc = main(["predict", "--checkpoint", str(files["checkpoint"]), str(files["root"] / "gone.png"),
               "--out", str(files["root"] / "p2")])
    assert rc == 2
    assert "gone.png" in capsys.readouterr().err


def test_predict_pads_to_stride_and_crops_back(files: dict[str, Path]) -> None:
    from gasnas.deploy.predict import pad_to_stride, segment
    from gasnas.models import load_network

    x = torch.zeros(1, 3, 70, 100)
    assert pad_to_stride(x).shape[-2:] == (96, 128)
    model, meta, _ = load_network(checkpoint=files["checkpoint"])
    label = segment(model, np.zeros((70, 100, 3), np.uint8), meta["mean"], meta["std"])
    assert label.shape == (70, 100)
