"""Every entry of every registry, the timm way: each op in `OPS`, each data format, each
torchvision peer and each shipped recipe is built and run at a tiny size, so an entry added to
a registry is tested the moment it is added."""

from __future__ import annotations

import copy

import pytest
import torch
from data_fixtures import make_camvid, make_cityscapes, make_folder
from test_engine_support import mixed_op_with_random_bn

from gasnas.config import RECIPE_DIR, DataConfig, LatencyConfig, load_config
from gasnas.data import build_dataset, class_names, ensure_synthetic
from gasnas.data.check import check_dataset
from gasnas.data.layouts import FORMATS
from gasnas.latency.keys import OpItem
from gasnas.latency.measure import measure_item
from gasnas.models import PEERS, build_peer
from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import Genotype, derive_genotype, shipped_genotypes
from gasnas.space.ops import OPS
from gasnas.space.supernet import Supernet

# --------------------------------------------------------------------------- ops


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_builds_runs_and_trains(name: str, stride: int, single_thread) -> None:
    torch.manual_seed(0)
    op = OPS[name](6, 6, stride)
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 6, -(-9 // stride), -(-11 // stride))
    assert torch.isfinite(y).all()
    if OPS[name].free:
        assert not y.any()  # `none` adds nothing
        return
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in op.parameters())


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", sorted(o for o in OPS if not OPS[o].free))
def test_op_fused_mixed_op_equals_plain(name: str, stride: int, single_thread) -> None:
    """A mixed op of this op and a 3x3 conv: the fused path (space/fused.py) gives the plain
    loop's output and gradients (fp64)."""
    ops = [name] if name == "conv_3x3" else [name, "conv_3x3"]
    plain = mixed_op_with_random_bn(stride, seed=stride, ops=ops)
    fused = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    fused.fused, fused.nonnegative_weights = True, True
    x0 = torch.randn(2, 6, 10, 12, dtype=torch.float64)
    w0 = torch.softmax(torch.randn(len(ops), dtype=torch.float64), 0)
    outs, grads = [], []
    for net, fmt in ((plain, torch.contiguous_format), (fused, torch.channels_last)):
        x = x0.clone().contiguous(memory_format=fmt).requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        y = net(x, w)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append((x.grad, w.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", sorted(o for o in OPS if not OPS[o].free))
def test_op_latency_table_entry_builds_and_times(name: str, single_thread) -> None:
    item = OpItem(name, 12, 16, 8, 8, 1)
    module, inputs = item.build()
    assert module(*inputs).shape == (1, 8, 12, 16)
    assert item.key.startswith(name + "_H12_W16_Cin8_Cout8_s1_d")
    assert measure_item(item, LatencyConfig(input_size=[12, 16], threads=1, warmup=0, repeats=1)) > 0


# --------------------------------------------------------------------------- data formats


def _fixture(fmt: str, tmp_path) -> DataConfig:
    if fmt == "synthetic":
        cfg = DataConfig(format=fmt, root=str(tmp_path / "syn"), synth_n_train=2, synth_n_val=1,
                         synth_size=[24, 32], crop_size=[16, 16])
        ensure_synthetic(cfg)
        return cfg
    make = {"camvid": make_camvid, "cityscapes": make_cityscapes, "folder": make_folder}[fmt]
    root = make(tmp_path / fmt, {"train": 2, "val": 1})
    return DataConfig(format=fmt, root=str(root), num_classes={"camvid": 11, "cityscapes": 19, "folder": 3}[fmt],
                      crop_size=[16, 16])


@pytest.mark.parametrize("fmt", FORMATS)
def test_data_format_builds_checks_and_loads(fmt: str, tmp_path) -> None:
    cfg = _fixture(fmt, tmp_path)
    report = check_dataset(cfg.root, fmt, progress=False)
    assert not report.problems, report.problems
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    assert len(train) == 2 and len(val) == 1
    image, label = train[0]
    assert image.shape == (3, 16, 16) and label.shape == (16, 16) and label.dtype == torch.int64
    valid = label[label != cfg.ignore_index]
    assert valid.numel() == 0 or int(valid.max()) < cfg.num_classes
    assert len(class_names(cfg)) == cfg.num_classes


# --------------------------------------------------------------------------- peers


@pytest.mark.parametrize("name", PEERS)
def test_peer_builds_without_downloads_and_returns_logits(name: str, single_thread) -> None:
    net = build_peer(name, 5).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 5, 64, 96)


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("path", sorted(RECIPE_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_resolves_and_builds_a_supernet_and_a_derived_net(path, single_thread) -> None:
    cfg = load_config(path)
    torch.manual_seed(0)
    supernet = Supernet(cfg.space, cfg.data.num_classes, fast=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert supernet(x).shape == (1, cfg.data.num_classes, 64, 64)
    genotype = derive_genotype(supernet, max_skip=cfg.search.max_skip_per_cell)
    net = DerivedNet(genotype).eval()
    with torch.no_grad():
        assert net(x).shape == (1, cfg.data.num_classes, 64, 64)


# --------------------------------------------------------------------------- shipped genotypes

# what every shipped genotype says about where it came from (configs/genotypes/README.md)
SHIPPED_PROVENANCE = {"recipe": str, "seed": int, "commit": str, "search_command": str, "target_ms": float,
                      "measured_latency_ms_one_run": float, "lraspp_ms_one_run": float,
                      "ratio_to_lraspp": float, "alpha_spread_mean": float}


def test_genotypes_are_shipped() -> None:
    assert shipped_genotypes(), "configs/genotypes holds no genotype"


@pytest.mark.parametrize("name", shipped_genotypes())
def test_shipped_genotype_loads_builds_and_states_its_provenance(name: str, single_thread) -> None:
    g = Genotype.load(name)  # by name, as `gasnas train -g NAME` takes it
    prov = g.provenance
    for key, kind in SHIPPED_PROVENANCE.items():
        assert isinstance(prov.get(key), kind), (name, key, prov.get(key))
    assert "val_miou" in prov  # None until a training run records it
    assert prov["val_miou"] is None or 0 < prov["val_miou"] <= 100
    cfg = load_config(prov["recipe"])
    assert g.space == cfg.space and g.num_classes == cfg.data.num_classes
    assert g.predicted_latency_ms and g.predicted_latency_ms > 0
    assert prov["ratio_to_lraspp"] == pytest.approx(prov["measured_latency_ms_one_run"] / prov["lraspp_ms_one_run"])
    net = DerivedNet(g).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 96)).shape == (1, cfg.data.num_classes, 64, 96)
