"""Resume after SIGKILL: a search and a training run killed mid-epoch (a real `python -m gasnas`
process, killed once a mid-epoch checkpoint exists) and resumed end EXACTLY where an
uninterrupted run ends: every weight, α, GGM parameter, BatchNorm buffer and optimizer state
torch.equal, the same metrics and genotype. CPU, deterministic, one thread, workers 0;
augmentation on (random scale, crop, flip, colour jitter)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_engine_support import (
    PYTHON,
    data_root,
    shared_lut,
    subprocess_env,
    tiny_config,
)

from gasnas.engine.checkpoint import load as load_ckpt
from gasnas.engine.search import run_search
from gasnas.engine.train import run_train
from gasnas.errors import GasnasError
from gasnas.fileio import torch_load
from gasnas.space.genotype import derive_genotype
from gasnas.space.supernet import Supernet

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses (CI runs them too)

VOLATILE = {"epoch_end_s"}


def _kill_mid_epoch(cmd: list[str], ckpt: Path, min_epoch: int, log: Path, timeout: float = 180) -> dict:
    """Run `cmd`; SIGKILL it as soon as `ckpt` is a mid-epoch checkpoint of epoch >= min_epoch."""
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if ckpt.is_file():
                    try:
                        ck = torch_load(ckpt)
                    except GasnasError:
                        ck = None
                    if ck and ck["epoch"] >= min_epoch and 0 < ck["step"] < ck["steps_per_epoch"]:
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                        return ck
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    pytest.fail(f"the run ended (rc {proc.returncode}) before a mid-epoch checkpoint appeared:\n{log.read_text()[-2000:]}")


def _assert_same_state(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, dict):
            _assert_same_state(va, vb, f"{where}.{k}")
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), f"{where}.{k} differs"
        else:
            assert va == vb, f"{where}.{k}: {va!r} != {vb!r}"


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", ["softmax", "gumbel", "gumbel-pair-uniform"])
def test_search_resumes_exactly_after_sigkill(tmp_path_factory, single_thread, relaxation) -> None:
    """Also the sampler's generator (Gumbel draws, pair rivals, uniform weight paths, skip
    dropout), the temperature schedule, the λ / budget policy (λ, calibration, per-stage
    gradient EMA) and the previous genotype."""
    relaxation, *variant = relaxation.split("-", 1)
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("resume_search")
    extra = (f"latency.lut={lut}", "search.epochs=4", "search.max_steps_per_epoch=4",
             f"search.relaxation={relaxation}", "search.skip_dropout=0.3", "search.latency_warmin_epochs=1",
             "search.latency_ramp_epochs=1", "latency.loss=target", "latency.target_ms=0.5",
             "latency.target_basis=derived",  # measured latency is timing noise: not bit-reproducible
             *(("search.path_gradient=pair", "search.weight_path=uniform") if variant else ()))
    ref_cfg = tiny_config(data, tmp, "reference", *extra)
    run_search(ref_cfg, ckpt_every_steps=1, show_progress=False)

    cfg = tiny_config(data, tmp, "killed", *extra)
    recipe = tmp / "killed.yaml"
    recipe.write_text(cfg.dump())
    ckpt = cfg.run_dir / "checkpoints/last.pt"
    cmd = [PYTHON, "-m", "gasnas", "search", "--config", str(recipe), "--ckpt-every-steps", "1", "--no-progress"]
    _kill_mid_epoch(cmd, ckpt, min_epoch=2, log=tmp / "killed.log")  # in the λ ramp: Adam, budget too
    left = load_ckpt(ckpt, "search")
    assert left["epoch"] < 4 and not (cfg.run_dir / "genotype.json").exists()

    run_search(cfg, resume=cfg.run_dir, ckpt_every_steps=1, show_progress=False)
    ref = load_ckpt(ref_cfg.run_dir / "checkpoints/last.pt", "search")
    got = load_ckpt(ckpt, "search")
    _assert_same_state(ref["supernet"], got["supernet"], "supernet")  # weights, α, GGM, BN buffers
    for key in ("w_optimizer", "a_optimizer", "rng", "budget", "relaxation", "previous_edges"):
        _assert_same_state({key: ref[key]}, {key: got[key]}, key)
    assert (ref["epoch"], ref["step"], ref["global_step"]) == (got["epoch"], got["step"], got["global_step"])
    assert _rows(ref_cfg.run_dir / "metrics.jsonl") == _rows(cfg.run_dir / "metrics.jsonl")
    g_ref = json.loads((ref_cfg.run_dir / "genotype.json").read_text())
    g_got = json.loads((cfg.run_dir / "genotype.json").read_text())
    assert g_ref["cells"] == g_got["cells"] and g_ref["predicted_latency_ms"] == g_got["predicted_latency_ms"]


def test_train_resumes_exactly_after_sigkill(tmp_path_factory, single_thread) -> None:
    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("resume_train")
    # the demo's training path: (fused) AdamW, class-weighted CE over every pixel + Dice, EMA,
    # decoder steps with the separable 1/4 fuse (the search test covers SGD)
    extra = ("space.aux_heads=true", "train.epochs=2", "train.max_steps_per_epoch=6", "train.ema_decay=0.9",
             "train.optimizer=adamw", "train.ohem_thresh=1.0", "train.class_weighting=enet",
             "train.dice_weight=0.5", "space.detail_channels=[4, 2]", "space.detail_fuse=sep")
    ref_cfg = tiny_config(data, tmp, "reference", *extra)
    torch.manual_seed(1)
    genotype = tmp / "genotype.json"
    derive_genotype(Supernet(ref_cfg.space, 11)).save(genotype)
    run_train(ref_cfg, genotype, ckpt_every_steps=1, show_progress=False)

    cfg = tiny_config(data, tmp, "killed", *extra)
    recipe = tmp / "killed.yaml"
    recipe.write_text(cfg.dump())
    last = cfg.run_dir / "train" / "last.pt"
    cmd = [PYTHON, "-m", "gasnas", "train", "--genotype", str(genotype), "--config", str(recipe),
           "--ckpt-every-steps", "1", "--no-progress"]
    _kill_mid_epoch(cmd, last, min_epoch=0, log=tmp / "killed.log")
    assert load_ckpt(last, "train")["epoch"] < 2

    run_train(cfg, None, resume=cfg.run_dir / "train", ckpt_every_steps=1, show_progress=False)
    ref = load_ckpt(ref_cfg.run_dir / "train" / "last.pt", "train")
    got = load_ckpt(last, "train")
    _assert_same_state(ref["model"], got["model"], "model")  # the weight average
    _assert_same_state(ref["train_model"], got["train_model"], "train_model")  # the raw weights
    _assert_same_state(ref["optimizer"], got["optimizer"], "optimizer")
    assert ref["optimizer"]["state"] and all("exp_avg" in st for st in ref["optimizer"]["state"].values())
    _assert_same_state(ref["rng"], got["rng"], "rng")
    assert ref["best_miou"] == got["best_miou"] and ref["global_step"] == got["global_step"]
    assert _rows(ref_cfg.run_dir / "train" / "metrics.jsonl") == _rows(cfg.run_dir / "train" / "metrics.jsonl")
    best_ref, best_got = torch_load(ref_cfg.run_dir / "train" / "best.pt"), torch_load(cfg.run_dir / "train" / "best.pt")
    _assert_same_state(best_ref["model"], best_got["model"], "best")
