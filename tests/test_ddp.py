"""Data parallelism: `torchrun --nproc-per-node 2 -m gasnas search` (gloo, CPU) gives the same
genotype and metrics as one process with the same global batch.

Why not bit-identical: each process sums its half of the batch, and sums are then added
across processes, so floating-point additions happen in a different order (the same is true
of the BatchNorm statistics, which are global: engine/distributed.py GlobalBatchNorm2d, and of
the mixed ops, which run unfused under several processes). One step's gradients agree to
~1e-7 relative. Tolerances: metrics rel 1e-4, weights 1e-4, α 1e-6 absolute.

Tiny-network caveat: at the default search.w_lr = 0.025 this 32x48 supernet is chaotic (its
deepest BatchNorms see 4 values): a 1e-7 difference grows ~50x per step, and ONE process
running the same maths with fused vs unfused mixed-op kernels diverges just as fast as 1 vs 2
processes. The test therefore uses w_lr = 0.002, where runs that differ only by rounding stay
within ~1e-6; every other setting is the default path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from test_engine_support import data_root, shared_lut, single_thread, subprocess_env, tiny_config  # noqa: F401

from gasnas.engine.checkpoint import load as load_ckpt
from gasnas.engine.search import run_search

METRICS = ("w_loss", "a_loss", "a_ce", "lat_loss", "expected_ms", "predicted_ms", "val_miou",
           "val_pixel_acc", "alpha_entropy_mean", "lr", "lambda")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_match_one(tmp_path_factory, single_thread) -> None:  # noqa: F811
    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("ddp")
    extra = (f"latency.lut={lut}", "search.batch_size=4", "search.max_steps_per_epoch=2",
             "search.w_lr=0.002", "search.w_lr_min=0.001")
    one = tiny_config(data, tmp, "one", *extra)
    run_search(one, show_progress=False)

    two = tiny_config(data, tmp, "two", *extra)
    recipe = tmp / "two.yaml"
    recipe.write_text(two.dump())
    torchrun = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent))
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc-per-node", "2", "-m", "gasnas", "search",
           "--config", str(recipe), "--no-progress"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("genotype: ") == 1  # rank 0 alone reports

    g1 = json.loads((one.run_dir / "genotype.json").read_text())
    g2 = json.loads((two.run_dir / "genotype.json").read_text())
    assert g1["cells"] == g2["cells"]
    assert g2["provenance"]["world_size"] == 2
    rows1 = [json.loads(x) for x in (one.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (two.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows1) == len(rows2) == 2
    for r1, r2 in zip(rows1, rows2):
        assert r1["steps"] == r2["steps"]
        for key in METRICS:
            if r1[key] is None:
                assert r2[key] is None, key
            else:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), key

    s1 = load_ckpt(one.run_dir / "checkpoints/last.pt", "search")["supernet"]
    s2 = load_ckpt(two.run_dir / "checkpoints/last.pt", "search")["supernet"]
    assert s1.keys() == s2.keys()
    worst = {}
    for k in s1:
        if s1[k].is_floating_point():
            worst[k] = float((s1[k] - s2[k]).abs().max())
            assert torch.allclose(s1[k], s2[k], rtol=1e-4, atol=1e-4), (k, worst[k])
        else:
            assert torch.equal(s1[k], s2[k]), k
    alphas = [k for k in s1 if k.startswith("alphas.")]
    assert alphas and max(worst[k] for k in alphas) < 1e-5
