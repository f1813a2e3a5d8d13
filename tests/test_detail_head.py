"""The optional 1/4 detail branch of the head (`space.detail_channels`): same skeleton in the
supernet, the derived net and the latency table; off by default (the paper's 1/8 head)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gasnas.config import LatencyConfig, SpaceConfig
from gasnas.latency import LatencyEstimator, build_lut
from gasnas.latency.keys import space_layout
from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import derive_genotype, genotype_weights
from gasnas.space.supernet import Supernet

SPACE = SpaceConfig(stem_channels=[4, 6, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1],
                    head_channels=8, detail_channels=4)
CLASSES = 3


def test_off_by_default_and_no_detail_modules() -> None:
    net = Supernet(dataclasses.replace(SPACE, detail_channels=0), CLASSES)
    assert net.head.detail is None and net.head.fuse is None
    assert "_D" not in space_layout(dataclasses.replace(SPACE, detail_channels=0), CLASSES, [32, 48]).head.key


@pytest.mark.parametrize("derived", [False, True])
def test_detail_branch_sees_the_quarter_feature_and_trains(derived: bool) -> None:
    torch.manual_seed(0)
    net = Supernet(SPACE, CLASSES)
    if derived:
        net = DerivedNet(derive_genotype(net))
    seen = []
    net.head.detail.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = torch.randn(2, 3, 64, 96)
    out = net(x)
    assert out.shape == (2, CLASSES, 64, 96) and torch.isfinite(out).all()
    assert seen == [(2, SPACE.stem_channels[1], 16, 24)]  # stem's second conv: 1/4
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert net.head.fuse[0].weight.grad.abs().sum() > 0


def test_latency_table_times_the_detail_head_and_one_hot_sum_holds() -> None:
    size = [32, 48]
    lat = LatencyConfig(input_size=size, threads=1, warmup=0, repeats=1)
    layout = space_layout(SPACE, CLASSES, size)
    assert layout.head.detail == (SPACE.stem_channels[1], 8, 12)
    assert "_D8x12_C6-4_" in layout.head.key
    module, inputs = layout.head.build()
    assert module.head.fuse is not None and len(inputs) == 4
    table = build_lut(SPACE, CLASSES, lat, progress=False, rounds=1)
    est = LatencyEstimator(SPACE, CLASSES, table, size, lat, calibrated=False)
    g = derive_genotype(Supernet(SPACE, CLASSES))
    by_hand = sum(table[it.key] for it in layout.fixed_items())
    for cl, cell in zip(layout.cells, g.cells):
        for src, dst, op in cell.edges:
            edge = next(e for e in cl.edges if (e.src, e.node) == (src, dst))
            by_hand += table[edge.item(op).key]
    assert float(est.expected_ms(genotype_weights(g))) == pytest.approx(by_hand, rel=1e-5)
