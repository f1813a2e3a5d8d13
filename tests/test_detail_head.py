"""The optional decoder steps of the head (`space.detail_channels`): the stem's 1/4 and then 1/2
features fused in, with the same skeleton in the supernet, the derived net and the latency table;
empty by default (the paper-style head at 1/8)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from lut_support import assert_one_hot_sum_holds

from gasnas.config import SpaceConfig
from gasnas.latency.keys import space_layout
from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import Genotype, derive_genotype
from gasnas.space.ops import ConvBNReLU, SepConv
from gasnas.space.supernet import Supernet

SPACE = SpaceConfig(stem_channels=[4, 6, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1],
                    head_channels=8, detail_channels=[4])
CLASSES = 3


def test_off_by_default_and_no_detail_modules() -> None:
    plain = dataclasses.replace(SPACE, detail_channels=[])
    net = Supernet(plain, CLASSES)
    assert len(net.head.detail) == 0 and len(net.head.fuse) == 0
    assert "_D" not in space_layout(plain, CLASSES, [32, 48]).head.key


@pytest.mark.parametrize("derived,widths,fuse", [(False, [4], "conv"), (True, [4], "conv"), (True, [4, 2], "conv"),
                                                 (False, [4, 2], "sep"), (True, [4, 2], "sep")])
def test_detail_steps_see_the_stem_features_and_train(derived: bool, widths: list[int], fuse: str) -> None:
    torch.manual_seed(0)
    net = Supernet(dataclasses.replace(SPACE, detail_channels=widths, detail_fuse=fuse), CLASSES)
    if derived:  # through the genotype's JSON: the fuse kind travels with the space
        g = derive_genotype(net)
        net = DerivedNet(Genotype.from_dict(json.loads(json.dumps(g.to_dict())), "genotype"))
    assert isinstance(net.head.fuse[0], SepConv if fuse == "sep" else ConvBNReLU)
    seen = []
    for m in net.head.detail:
        m.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    fused = []
    net.head.classifier.register_forward_hook(lambda m, i, o: fused.append(tuple(i[0].shape[-2:])))
    x = torch.randn(2, 3, 64, 96)
    out = net(x)
    assert out.shape == (2, CLASSES, 64, 96) and torch.isfinite(out).all()
    expected = [(2, 6, 16, 24), (2, 4, 32, 48)][:len(widths)]  # stem conv 2 (1/4), then conv 1 (1/2)
    assert seen == expected
    assert fused == [expected[-1][-2:]]  # the classifier runs at the finest fused scale
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(f[0].weight.grad.abs().sum() > 0 for f in net.head.fuse)


def test_detail_channels_are_validated(capsys) -> None:
    from gasnas.cli import main

    assert main(["config", "show", "demo", "--set", "space.detail_channels=[8, 8, 8]"]) == 2
    assert "space.detail_channels" in capsys.readouterr().err
    # a two-conv stem has one feature finer than the cells (1/2): one detail step at most
    assert main(["config", "show", "demo", "--set", "space.stem_channels=[32, 48]"]) == 2
    assert "space.detail_channels" in capsys.readouterr().err
    assert main(["config", "show", "demo", "--set", "space.stem_channels=[8, 8, 8, 8]"]) == 2
    assert "'space.stem_channels': expected 1-3 widths" in capsys.readouterr().err


@pytest.mark.parametrize("derived", [False, True])
def test_two_conv_stem_runs_the_cells_at_a_quarter(derived: bool) -> None:
    """`space.stem_channels` with two widths: cells at 1/4, 1/8, 1/16 (for small inputs), the one
    detail step fuses the stem's 1/2 feature; the latency table walks the same shapes."""
    from gasnas.space.network import plan_cells

    space = dataclasses.replace(SPACE, stem_channels=[4, 6], detail_channels=[4], detail_fuse="sep")
    assert [p.scale for p in plan_cells(space)] == [4, 8, 8, 16, 16]
    torch.manual_seed(0)
    net = Supernet(space, CLASSES)
    if derived:
        net = DerivedNet(Genotype.from_dict(json.loads(json.dumps(derive_genotype(net).to_dict())), "g"))
    feats: list[tuple[int, ...]] = []
    net.cells[0].register_forward_hook(lambda m, i, o: feats.append(tuple(o.shape)))
    seen: list[tuple[int, ...]] = []
    net.head.detail[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    out = net(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, CLASSES, 64, 96)
    assert feats == [(2, 8, 16, 24)] and seen == [(2, 4, 32, 48)]
    out.square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None] == []
    layout = space_layout(space, CLASSES, [64, 96])
    assert layout.head.details == ((4, 32, 48),)
    assert [c.edges[0].h for c in layout.cells] == [16, 16, 8, 8, 4]  # edge inputs: s1's map


def test_latency_table_times_the_detail_head_and_one_hot_sum_holds() -> None:
    size = [32, 64]  # a multiple of the stride: no input padding (tests/test_input_padding.py)
    layout = space_layout(SPACE, CLASSES, size)
    assert layout.head.details == ((6, 8, 16),)
    assert "_D8x16_C6-4_" in layout.head.key
    two = space_layout(dataclasses.replace(SPACE, detail_channels=[4, 2]), CLASSES, size).head
    assert "_D8x16_C6-4_D16x32_C4-2_" in two.key
    module, inputs = two.build()
    assert len(module.head.fuse) == 2 and len(inputs) == 5
    assert tuple(module.eval()(*inputs).shape) == (1, CLASSES, *size)
    sep = space_layout(dataclasses.replace(SPACE, detail_channels=[4, 2], detail_fuse="sep"), CLASSES, size).head
    assert sep.key != two.key and "_sep_" in sep.key  # a table never mixes the two heads up
    assert isinstance(sep.build()[0].head.fuse[0], SepConv)
    assert_one_hot_sum_holds(SPACE, CLASSES, size)


def test_resize_gradient_is_bilinear_in_channels_last_and_runs_channels_last() -> None:
    """The head's resize hands its backward a channels-last gradient, whatever layout arrives
    (here a channel slice of a concatenation, as in the detail steps), without changing it."""
    from gasnas.space.network import resize

    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ref = x.detach().clone().requires_grad_(True)
    seen: list[bool] = []
    y = resize(x, (12, 14))
    assert y._backward_hooks  # channels-last input with grad: the layout hook is on
    y.register_hook(lambda g: seen.append(g.is_contiguous()))  # runs before resize's own hook
    other = torch.randn(2, 3, 12, 14)
    out = torch.cat([y, other], dim=1).contiguous(memory_format=torch.channels_last)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    y_ref = torch.nn.functional.interpolate(ref, size=(12, 14), mode="bilinear", align_corners=False)
    (torch.cat([y_ref, other], dim=1) * w).sum().backward()
    assert torch.equal(y.detach(), y_ref.detach())
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-6, atol=1e-6)
    assert seen == [False]  # the gradient arrived strided (a slice), and was made channels-last
    # NCHW inputs, and no-grad calls, are left alone
    assert not resize(torch.randn(1, 2, 3, 3, requires_grad=True), (6, 6))._backward_hooks
    with torch.no_grad():
        assert resize(x, (12, 14)).shape == (2, 5, 12, 14)
