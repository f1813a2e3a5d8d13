"""`space.pad_to_stride`: the input is edge-padded on the right and bottom to a multiple of the
net's stride and the logits are cropped back, in the supernet, the derived net, the latency
table and the ONNX export alike."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from lut_support import assert_one_hot_sum_holds

from gasnas.config import SpaceConfig
from gasnas.latency.keys import PaddedStem, space_layout
from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import derive_genotype
from gasnas.space.network import net_stride, padded_size
from gasnas.space.supernet import Supernet

SPACE = SpaceConfig(stem_channels=[4, 6, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1],
                    head_channels=8, detail_channels=[4, 2], detail_fuse="sep")
CLASSES = 3


def test_stride_and_padded_size() -> None:
    assert net_stride(SPACE) == 32  # three stem convs, two reduction cells
    assert net_stride(dataclasses.replace(SPACE, stem_channels=[4, 8], detail_channels=[2])) == 16
    assert padded_size(SPACE, 180, 240) == (192, 256)
    assert padded_size(SPACE, 64, 96) == (64, 96)
    assert padded_size(dataclasses.replace(SPACE, pad_to_stride=False), 180, 240) == (180, 240)


@pytest.mark.parametrize("derived", [False, True])
def test_padded_net_equals_padding_by_hand_and_differs_from_no_padding(derived: bool) -> None:
    torch.manual_seed(0)
    off = dataclasses.replace(SPACE, pad_to_stride=False)
    if derived:
        g = derive_genotype(Supernet(SPACE, CLASSES))
        net, plain = DerivedNet(g), DerivedNet(dataclasses.replace(g, space=off))
    else:
        net, plain = Supernet(SPACE, CLASSES), Supernet(off, CLASSES)
    plain.load_state_dict(net.state_dict())
    net.eval(), plain.eval()
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        out = net(x)
        by_hand = plain(F.pad(x, (0, 26, 0, 19), mode="replicate"))[..., :45, :70]
        unpadded = plain(x)
    assert out.shape == (2, CLASSES, 45, 70) and out.is_contiguous()
    torch.testing.assert_close(out, by_hand)
    # without padding the odd sizes (45 -> 23 -> 12 -> 6 -> 3 -> 2) change every coarse feature
    assert (out - unpadded).abs().max() > 1e-3
    # padding has no weights: switching it off on the padded net gives the unpadded net
    net.set_input_padding(False)
    with torch.no_grad():
        torch.testing.assert_close(net(x), unpadded)


def test_padded_net_trains_and_crops_its_aux_logits() -> None:
    torch.manual_seed(0)
    net = Supernet(dataclasses.replace(SPACE, aux_heads=True), CLASSES)  # fast: channels-last
    out, aux = net(torch.randn(2, 3, 40, 50), return_aux=True)
    assert out.shape == (2, CLASSES, 40, 50) and all(a.shape == out.shape for a in aux)
    (out.square().mean() + sum(a.mean() for a in aux)).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas)


def test_latency_table_times_the_padding_and_one_hot_sum_holds() -> None:
    size = [40, 50]
    layout = space_layout(SPACE, CLASSES, size)
    assert layout.stem.key.endswith("_P64x64")
    assert layout.head.key.endswith("_out40x50_up64x64")
    assert layout.cells[0].skeleton.h1 == 8 and layout.cells[0].skeleton.w1 == 8  # 64 / 8
    stem, (x,) = layout.stem.build()
    assert isinstance(stem, PaddedStem) and x.shape[-2:] == (40, 50)
    assert stem.eval()(x).shape[-2:] == (8, 8)
    head, inputs = layout.head.build()
    assert head.eval()(*inputs).shape == (1, CLASSES, 40, 50)
    unpadded = space_layout(dataclasses.replace(SPACE, pad_to_stride=False), CLASSES, size)
    assert "_P" not in unpadded.stem.key and "_up" not in unpadded.head.key
    assert_one_hot_sum_holds(SPACE, CLASSES, size)


def test_onnx_export_pads_at_every_size() -> None:
    ort = pytest.importorskip("onnxruntime")
    from gasnas.latency.timing import onnx_bytes

    torch.manual_seed(0)
    net = DerivedNet(derive_genotype(Supernet(SPACE, CLASSES))).eval()
    session = ort.InferenceSession(onnx_bytes(net, torch.randn(1, 3, 64, 96), dynamic=True),
                                   providers=["CPUExecutionProvider"])
    for h, w in [(64, 96), (45, 70), (50, 33)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == expected.shape
        assert abs(got - expected).max() < 1e-4, (h, w)
