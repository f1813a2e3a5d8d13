"""Training end to end (aux heads, OHEM, best/last checkpoints) and `gasnas eval` on its output."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine_support import data_root, tiny_config

from gasnas.cli import main
from gasnas.engine.checkpoint import load as load_ckpt
from gasnas.engine.train import WeightEMA, poly_lr, run_train, unused_space_keys
from gasnas.space.derived import DerivedNet, load_derived_checkpoint
from gasnas.space.genotype import derive_genotype
from gasnas.space.supernet import Supernet


def random_genotype(cfg, path):
    torch.manual_seed(1)
    g = derive_genotype(Supernet(cfg.space, cfg.data.num_classes), {"dataset": "test"})
    g.save(path)
    return path


def test_space_settings_the_genotype_overrides_are_named() -> None:
    import dataclasses

    from gasnas.config import SpaceConfig

    g = SpaceConfig(head_channels=8)
    assert unused_space_keys(dataclasses.replace(g, aux_heads=True), g) == []  # aux heads: from the config
    assert unused_space_keys(dataclasses.replace(g, head_channels=64, detail_fuse="sep"), g) == [
        "space.head_channels (config 64, genotype 8)", "space.detail_fuse (config sep, genotype conv)"]


def test_poly_lr() -> None:
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_weight_ema_averages_floats_and_copies_step_counts() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = WeightEMA(net, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(5, 3))  # BN running stats and num_batches_tracked move
    ema.update(step=100)  # ramp (101/110) > 0.9: the decay is 0.9
    now = {k: v.clone() for k, v in ema.module.state_dict().items()}
    src = net.state_dict()
    for k in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(now[k], 0.9 * before[k] + 0.1 * src[k]), k
    assert int(now["1.num_batches_tracked"]) == 1
    assert not any(p.requires_grad for p in ema.module.parameters())
    ema.update(step=0)  # first step: decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module[0].weight, 0.1 * now["0.weight"] + 0.9 * net[0].weight)


def test_train_writes_loadable_checkpoints_and_eval_reads_them(tmp_path_factory, single_thread, capsys, monkeypatch) -> None:
    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("train")
    cfg = tiny_config(data, tmp, "tr", "space.aux_heads=true")
    genotype = random_genotype(cfg, tmp / "genotype.json")
    best = run_train(cfg, genotype, show_progress=False)
    assert "not used" not in capsys.readouterr().err  # the recipe's space is the genotype's
    out = cfg.run_dir / "train"
    assert best == out / "best.pt"
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml", "genotype.json",
                 "plots/loss.png", "plots/miou.png", "plots/predictions.png"):
        assert (out / name).is_file(), name

    model, meta = load_derived_checkpoint(best)
    assert isinstance(model, DerivedNet) and model.head.aux is not None  # trained with aux heads
    for key in ("class_names", "palette", "mean", "std", "dataset", "epoch", "miou"):
        assert key in meta, key
    assert len(meta["class_names"]) == 11 and len(meta["palette"]) == 11 and len(meta["palette"][0]) == 3
    last_model, last_meta = load_derived_checkpoint(out / "last.pt")
    assert last_meta["epoch"] == 2
    ck = load_ckpt(out / "last.pt", "train")
    assert (ck["epoch"], ck["step"], ck["global_step"]) == (2, 0, 6)

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"loss", "lr", "val_miou", "best_miou"} <= set(r) for r in rows)
    assert max(r["val_miou"] for r in rows) == pytest.approx(meta["miou"])
    assert rows[1]["lr"] < rows[0]["lr"]
    capsys.readouterr()

    # gasnas eval: same split, same network, no TTA → the mIoU recorded in best.pt
    preds = tmp / "preds"
    report = tmp / "eval.json"
    assert main(["eval", "--checkpoint", str(best), "--save-preds", str(preds), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "Sky" in printed
    result = json.loads(report.read_text())
    assert result["miou"] == pytest.approx(meta["miou"])
    assert len(result["confusion"]) == 11 and len(result["iou"]) == 11
    assert len(list(preds.glob("val_*.png"))) == 2 and (preds / "examples.png").is_file()
    # the padding to the stride has no weights: eval turns it off on request (what that changes
    # at the network: tests/test_input_padding.py)
    from gasnas.space.network import SegmentationNet

    calls: list[bool] = []
    real = SegmentationNet.set_input_padding
    monkeypatch.setattr(SegmentationNet, "set_input_padding", lambda self, on: (calls.append(on), real(self, on))[1])
    unpadded = tmp / "eval-unpadded.json"
    assert main(["eval", "--checkpoint", str(best), "--set", "space.pad_to_stride=false", "--json", str(unpadded)]) == 0
    assert calls[-1] is False and 0.0 <= json.loads(unpadded.read_text())["miou"] <= 1.0
    # TTA runs and gives a valid number
    assert main(["eval", "--checkpoint", str(best), "--flip", "--scales", "0.75,1,1.25", "--json", str(report)]) == 0
    assert 0.0 <= json.loads(report.read_text())["miou"] <= 1.0


def test_train_peer_with_the_same_loop_and_eval_reads_it(tmp_path_factory, single_thread, capsys) -> None:
    """`gasnas train --peer`: the torchvision baseline through the same loop; checkpoints name the
    peer, and eval/bench rebuild it from the name."""
    from gasnas.models import load_trained

    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("peer")
    cfg = tiny_config(data, tmp, "peer", "train.epochs=1", "train.max_steps_per_epoch=2",
                      "train.optimizer=adamw", "train.lr=0.001", "train.weight_decay=0.01")
    best = run_train(cfg, None, peer="lraspp_mobilenet_v3_large", show_progress=False)
    ck = load_ckpt(best.parent / "last.pt", "train")
    assert ck["peer"] == "lraspp_mobilenet_v3_large" and "genotype" not in ck
    assert ck["optimizer"]["param_groups"][1]["weight_decay"] == 0.0  # AdamW: no decay on BN/bias
    assert not (best.parent / "genotype.json").exists()
    model, meta = load_trained(best)
    assert model.peer == "lraspp_mobilenet_v3_large" and model.num_classes == 11
    report = tmp / "eval.json"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(best), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["miou"] == pytest.approx(meta["miou"])
    # exactly one of --genotype / --peer
    assert main(["train", "-c", str(cfg.run_dir / "train" / "config.yaml"), "--run-dir", str(tmp / "x")]) == 2
    assert "exactly one of --genotype" in capsys.readouterr().err
    assert main(["train", "--peer", "resnet9000", "-c", str(cfg.run_dir / "train" / "config.yaml"),
                 "--run-dir", str(tmp / "y")]) == 2
    assert "--peer resnet9000" in capsys.readouterr().err


def test_class_weighted_training_counts_pixels_and_records_weights(tmp_path_factory, single_thread) -> None:
    import numpy as np

    from gasnas.data import build_dataset
    from gasnas.data.datasets import map_label, read_label
    from gasnas.engine.losses import class_weights

    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("train-cw")
    cfg = tiny_config(data, tmp, "cw", "train.class_weighting=median_freq", "train.epochs=1")
    ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
    counts = ds.class_pixel_counts()
    manual = np.zeros(11, dtype=np.int64)
    for pair, lut in zip(ds.pairs, ds.luts):
        ids = map_label(read_label(pair.label), lut)
        for c in range(11):
            manual[c] += int((ids == c).sum())
    assert counts.tolist() == manual.tolist() and counts.sum() > 0

    best = run_train(cfg, random_genotype(cfg, tmp / "genotype.json"), show_progress=False)
    _, meta = load_derived_checkpoint(best)
    assert meta["class_weights"] == pytest.approx(class_weights(counts, "median_freq"))
    assert meta["config"]["train"]["class_weighting"] == "median_freq"


def test_class_weighting_without_labelled_pixels_is_a_one_line_error(tmp_path_factory, single_thread,
                                                                      monkeypatch, capsys) -> None:
    import numpy as np

    from gasnas.data.datasets import SegmentationDataset

    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("train-cw-empty")
    cfg = tiny_config(data, tmp, "cwe", "train.class_weighting=enet", "train.epochs=1")
    genotype = random_genotype(cfg, tmp / "genotype.json")
    recipe = tmp / "cwe.yaml"
    recipe.write_text(cfg.dump())
    monkeypatch.setattr(SegmentationDataset, "class_pixel_counts", lambda self, progress=False: np.zeros(11, np.int64))
    assert main(["train", "--genotype", str(genotype), "--config", str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(data) in err[0] and "train.class_weighting=enet" in err[0]
    assert not (cfg.run_dir / "train" / "last.pt").exists()


def test_logit_adjustment_folds_the_best_tau_into_best_pt_once(tmp_path_factory, single_thread, capsys) -> None:
    """train.logit_adjust: τ is the argmax of the sweep on every k-th training image, folded
    into the classifier bias of best.pt (last.pt keeps the raw weights), the recorded val mIoU is
    that of the adjusted net, and resuming the finished run does not adjust twice."""
    from torch.utils.data import Subset

    from gasnas.data import build_dataset
    from gasnas.engine.evaluate import LOGIT_ADJUST_TAUS, evaluate, logit_adjust_sweep
    from gasnas.engine.sampling import eval_loader

    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("train-la")
    cfg = tiny_config(data, tmp, "la", "train.class_weighting=enet", "train.epochs=1",
                      "train.logit_adjust=true", "train.logit_adjust_every=2")
    best = run_train(cfg, random_genotype(cfg, tmp / "genotype.json"), show_progress=False)
    model, meta = load_derived_checkpoint(best)
    record = meta["logit_adjust"]
    train_ds = build_dataset(cfg.data, cfg.data.train_split, train=False)
    assert record["calibration_images"] == len(range(0, len(train_ds), 2))

    raw = DerivedNet(model.genotype)
    raw.load_state_dict(load_ckpt(best.parent / "last.pt", "train")["model"])  # epoch 1 = the best one
    log_w = torch.log(torch.tensor(meta["class_weights"]))
    sweep = logit_adjust_sweep(raw, eval_loader(Subset(train_ds, list(range(0, len(train_ds), 2)))), log_w,
                               LOGIT_ADJUST_TAUS, 11)
    assert sweep == pytest.approx(list(record["calibration_miou"].values()))
    tau = record["tau"]
    assert sweep[LOGIT_ADJUST_TAUS.index(tau)] == max(sweep)
    assert torch.allclose(model.head.classifier.bias, raw.head.classifier.bias - tau * log_w, atol=1e-6)
    val = eval_loader(build_dataset(cfg.data, cfg.data.val_split, train=False))
    assert evaluate(model, val, 11)["miou"] == pytest.approx(meta["miou"])
    assert logit_adjust_sweep(raw, val, log_w, [0.0], 11)[0] == pytest.approx(record["val_miou_before"])
    assert "logit adjustment: tau" in capsys.readouterr().err

    again = run_train(cfg, None, resume=best.parent, show_progress=False)
    assert torch.equal(load_derived_checkpoint(again)[0].head.classifier.bias, model.head.classifier.bias)
    with pytest.raises(Exception, match="train.logit_adjust"):
        tiny_config(data, tmp, "la2", "train.logit_adjust=true")


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path_factory, single_thread) -> None:
    """train.compile: the step runs the compiled graph of the same module, so an epoch gives the
    eager run's losses (to compiler rounding) and a checkpoint with the module's own keys, which
    loads into a plain DerivedNet. (Weights after Adam steps are not compared: Adam turns the
    rounding of near-zero gradient elements into whole steps.)"""
    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("compile")
    runs = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        cfg = tiny_config(data, tmp, name, f"train.compile={flag}", "train.epochs=1", "train.max_steps_per_epoch=2")
        run_train(cfg, random_genotype(cfg, tmp / f"{name}.json"), show_progress=False)
        runs[name] = cfg.run_dir / "train"
    losses = {k: [json.loads(x)["loss"] for x in (v / "metrics.jsonl").read_text().splitlines()] for k, v in runs.items()}
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)
    eager, compiled = (load_ckpt(v / "last.pt", "train")["model"] for v in runs.values())
    assert list(compiled) == list(eager) and not any(k.startswith("_orig_mod") for k in compiled)
    model, _ = load_derived_checkpoint(runs["compiled"] / "best.pt")
    assert isinstance(model, DerivedNet)
