"""Search space: supernet/derived forward+backward, GGM gradients, genotype round trip and errors."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from test_engine_support import mixed_op_with_random_bn

from gasnas.cli import main
from gasnas.config import GGMConfig, SpaceConfig
from gasnas.engine.architect import frozen
from gasnas.errors import GasnasError
from gasnas.ggm import GCNGuidedModule
from gasnas.space import OPS, DerivedNet, Genotype, Supernet, derive_genotype, genotype_weights
from gasnas.space.cell import edge_index, num_edges
from gasnas.space.network import plan_cells

TINY = dict(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1])
SPACES = {
    "tiny": SpaceConfig(**TINY),
    "three_nodes_aux": SpaceConfig(**TINY, nodes=3, aux_heads=True),
    "few_ops_global": SpaceConfig(**TINY, ops=["none", "skip_connect", "sep_conv_3x3"],
                                  ggm=GGMConfig(mode="global")),
    "no_ggm_two_stages": SpaceConfig(stem_channels=[4, 4, 8], stage_channels=[8, 16],
                                     cells_per_stage=[2, 1], ggm=GGMConfig(mode="none")),
}


def _grads_everywhere(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]


@pytest.mark.parametrize("name", sorted(SPACES))
def test_supernet_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    space = SPACES[name]
    net = Supernet(space, num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    out = net(x, return_aux=True) if space.aux_heads else net(x)
    logits = out[0] if space.aux_heads else out
    assert logits.shape == (2, 5, 64, 96)
    assert torch.isfinite(logits).all()
    loss = logits.square().mean() + (sum(a.square().mean() for a in out[1]) if space.aux_heads else 0)
    loss.backward()
    missing = _grads_everywhere(net)
    if space.ggm.mode == "none":  # GGM params unused by design when the GGM is off
        missing = [n for n in missing if not n.startswith("ggm.")]
    assert missing == []
    for k, a in enumerate(net.alphas):
        assert a.shape == (num_edges(space.nodes), len(space.ops))
        assert a.grad is not None and a.grad.abs().sum() > 0, f"cell {k} alpha got no gradient"


def test_alphas_are_independent_per_cell() -> None:
    net = Supernet(SpaceConfig(**TINY), 3)
    ptrs = {a.data_ptr() for a in net.alphas}
    assert len(ptrs) == len(net.alphas) == len(plan_cells(net.space))


@pytest.mark.parametrize("mode", ["adjacent", "global"])
def test_ggm_gradients_reach_alpha_and_ggm(mode: str) -> None:
    torch.manual_seed(0)
    ggm = GCNGuidedModule(num_ops=4, mode=mode, gamma=0.5)
    with torch.no_grad():
        ggm.weight.weight.normal_(std=0.1)  # as after the first architecture step (it starts at 0)
    alphas = [torch.randn(5, 4, requires_grad=True) for _ in range(3)]
    out = ggm(alphas)
    assert [o.shape for o in out] == [a.shape for a in alphas]
    # Loss on the LAST cell only: in adjacent mode its α' depends on cell 1's α too.
    (out[-1] * torch.randn(5, 4)).sum().backward()
    assert alphas[1].grad is not None and alphas[1].grad.abs().sum() > 0
    assert alphas[2].grad.abs().sum() > 0
    for name, p in ggm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if mode == "adjacent":
        assert torch.equal(out[0], alphas[0])  # cell 0 keeps α'_0 = α_0
        assert alphas[0].grad is None or alphas[0].grad.abs().sum() == 0
    else:
        assert alphas[0].grad.abs().sum() > 0


def test_ggm_none_is_identity() -> None:
    ggm = GCNGuidedModule(num_ops=4, mode="none")
    alphas = [torch.randn(5, 4) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(ggm(alphas), alphas))


def test_supernet_uses_guided_alphas() -> None:
    torch.manual_seed(0)
    net = Supernet(SpaceConfig(**TINY), 3)
    with torch.no_grad():
        for a in net.alphas:
            a.normal_()
        net.ggm.weight.weight.normal_(std=0.1)  # it starts at 0 (α' = α)
    guided = net.guided_alphas()
    assert torch.equal(guided[0], net.alphas[0])
    assert not torch.allclose(guided[1], net.alphas[1])
    assert torch.allclose(net.op_weights()[1], torch.softmax(guided[1], -1))


def _derived_from_random_supernet(space: SpaceConfig, seed: int = 0) -> Genotype:
    torch.manual_seed(seed)
    net = Supernet(space, 4)
    with torch.no_grad():
        for a in net.alphas:
            a.normal_(std=2.0)
    return derive_genotype(net, {"dataset": "unit-test", "seed": seed})


def test_derivation_rule() -> None:
    ops = ["none", "skip_connect", "conv_3x3"]
    from gasnas.space.genotype import derive_cell

    # nodes=2 → edges (0,0) (1,0) (0,1) (1,1) (2,1)
    w = torch.tensor([[0.90, 0.04, 0.06],  # strong `none` is ignored: ranked by 0.06 only
                      [0.10, 0.20, 0.70],
                      [0.00, 0.60, 0.40],
                      [0.10, 0.10, 0.80],
                      [0.00, 0.55, 0.45]])  # third-strongest edge into node 1: dropped
    edges = derive_cell(w, ops, nodes=2)
    assert edges == [(0, 0, "conv_3x3"), (1, 0, "conv_3x3"), (0, 1, "skip_connect"), (1, 1, "conv_3x3")]
    assert all(op != "none" for _, _, op in edges)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_derived_net_has_exactly_the_chosen_ops(name: str) -> None:
    space = SPACES[name]
    geno = _derived_from_random_supernet(space)
    net = DerivedNet(geno)
    for cell, gene in zip(net.cells, geno.cells):
        assert cell.edges == list(gene.edges)
        assert len(cell.ops) == len(gene.edges) == 2 * space.nodes
        for op_module, (src, _, op) in zip(cell.ops, gene.edges):
            expected = OPS[op](cell.c, cell.c, cell.edge_stride(src))
            assert type(op_module) is type(expected)
            assert [type(m) for m in op_module.modules()] == [type(m) for m in expected.modules()]
    x = torch.randn(2, 3, 64, 96)
    out, aux = net(x, return_aux=True)
    assert out.shape == (2, 4, 64, 96) and torch.isfinite(out).all()
    assert len(aux) == (2 if space.aux_heads else 0)
    (out.mean() + sum(a.mean() for a in aux)).backward()
    assert _grads_everywhere(net) == []


def test_genotype_json_round_trip(tmp_path) -> None:
    geno = _derived_from_random_supernet(SpaceConfig(**TINY))
    geno.predicted_latency_ms = 12.5
    path = geno.save(tmp_path / "g.json")
    back = Genotype.load(path)
    assert back.to_dict() == geno.to_dict()
    assert back.provenance["dataset"] == "unit-test"
    w = genotype_weights(back)
    assert all(t.sum() == len(c.edges) for t, c in zip(w, back.cells))


def _mutate(data: dict, how: str) -> dict:
    d = json.loads(json.dumps(data))
    if how == "schema":
        d["schema_version"] = 99
    elif how == "op":
        d["cells"][0]["edges"][0][2] = "conv_9x9"
    elif how == "source":
        d["cells"][1]["edges"][0][0] = 7
    elif how == "node":
        d["cells"][1]["edges"][0][1] = 5
    elif how == "cells":
        d["cells"].pop()
    elif how == "space":
        d["space"]["nodez"] = 3
    elif how == "reduction":
        d["cells"][0]["reduction"] = True
    return d


@pytest.mark.parametrize(("how", "field"), [
    ("schema", "field 'schema_version'"), ("op", "field 'cells[0].edges[0]': unknown op 'conv_9x9'"),
    ("source", "field 'cells[1].edges[0]': source 7"), ("node", "field 'cells[1].edges[0]': node 5"),
    ("cells", "field 'cells': 4 cells, the space has 5"), ("space", "unknown config key 'space.nodez'"),
    ("reduction", "field 'cells[0].reduction'"),
])
def test_invalid_genotype_errors(tmp_path, how: str, field: str) -> None:
    geno = _derived_from_random_supernet(SpaceConfig(**TINY))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_mutate(geno.to_dict(), how)))
    with pytest.raises(GasnasError) as err:
        Genotype.load(path)
    assert field in str(err.value) and str(path) in str(err.value)


def test_arch_show_cli(tmp_path, capsys) -> None:
    geno = _derived_from_random_supernet(SpaceConfig(**TINY))
    path = geno.save(tmp_path / "g.json")
    png = tmp_path / "cells.png"
    assert main(["arch", "show", str(path), "--out", str(png), "--input", "64x96"]) == 0
    out = capsys.readouterr().out
    assert "params" in out and "FLOPs" in out and png.stat().st_size > 1000
    (tmp_path / "broken.json").write_text("{")
    assert main(["arch", "show", str(tmp_path / "broken.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_edge_index_order() -> None:
    assert edge_index(2) == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]
    assert num_edges(3) == 9


def _fast_and_reference(recompute_stages: int, space: SpaceConfig | None = None):
    torch.manual_seed(0)
    space = space or SpaceConfig(**TINY)
    fast = Supernet(space, 4, fast=True, recompute_stages=recompute_stages).double()
    ref = Supernet(space, 4, fast=False).double()
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
        for net in (fast, ref):
            g = torch.Generator().manual_seed(1)
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=torch.float64) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
            for a in net.alphas:
                a.copy_(torch.randn(a.shape, generator=g, dtype=torch.float64))
    return fast, ref


def _assert_same_grads(fast, ref, names, atol=1e-9) -> None:
    got = dict(fast.named_parameters())
    for name, q in ref.named_parameters():
        if name not in names:
            continue
        p = got[name]
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=atol), name


@pytest.mark.parametrize("recompute_stages", [0, 3])
def test_fused_supernet_matches_reference(recompute_stages: int) -> None:
    """The fast path (one autograd Function per mixed op, channels-last, BN/ReLU/depthwise
    recomputed in backward; with `recompute_stages`, pointwise convs too) is the same
    function: same outputs, running statistics and gradients (α, GGM, weights) as the plain
    reference, float64, train mode (BatchNorm batch statistics), in a full backward and in
    the search's two steps (weights step with α/GGM frozen, α step with the weights frozen)."""
    fast, ref = _fast_and_reference(recompute_stages)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 64, 96))
    arch_names = {n for n, p in ref.named_parameters() if any(p is a for a in ref.arch_parameters())}
    weight_names = {n for n, _ in ref.named_parameters()} - arch_names
    assert len(arch_names) == len(ref.alphas) + len(list(ref.ggm.parameters()))

    def loss(net):
        return torch.nn.functional.cross_entropy(net(x), y)

    y_fast, y_ref = fast(x), ref(x)
    assert (y_fast - y_ref).abs().max() < 1e-9
    (y_fast * y_ref.detach()).sum().backward()
    (y_ref * y_ref.detach()).sum().backward()
    _assert_same_grads(fast, ref, arch_names | weight_names)
    for (name, b), c in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(b.double(), c.double(), atol=1e-9), name  # running stats updated alike
    for net in (fast, ref):  # the weights step: α and the GGM frozen
        net.zero_grad(set_to_none=True)
        with frozen(net.arch_parameters()):
            loss(net).backward()
        assert all(p.grad is None for p in net.arch_parameters())
    _assert_same_grads(fast, ref, weight_names)
    for net in (fast, ref):  # the α step: the weights frozen
        net.zero_grad(set_to_none=True)
        with frozen(net.weight_parameters()):
            loss(net).backward()
        assert all(p.grad is None for p in net.weight_parameters())
    _assert_same_grads(fast, ref, arch_names)
    for net in (fast, ref):  # eval mode: running statistics, outputs and gradients still agree
        net.eval().zero_grad(set_to_none=True)
    out_fast, out_ref = loss(fast), loss(ref)
    assert abs(float(out_fast.detach() - out_ref.detach())) < 1e-10
    out_fast.backward()
    out_ref.backward()
    _assert_same_grads(fast, ref, arch_names | weight_names)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(9, 13), (4, 3)])
def test_fused_mixed_op_edge_cases(stride: int, size: tuple[int, int]) -> None:
    """One mixed op, fused vs plain, float64: op weights of both signs and zero (the product is
    then taken after the ReLU instead of inside BatchNorm), strided edges (even dilations
    subsampled, FactorizedReduce through plain autograd), maps smaller than the dilation
    (only the centre tap), train and eval mode, every subset of gradients."""

    ref = mixed_op_with_random_bn(stride, seed=0, running_var=True)
    x0 = torch.randn(3, 6, *size, dtype=torch.float64)
    go = torch.randn(3, 6, -(-size[0] // stride), -(-size[1] // stride), dtype=torch.float64)
    for weights in (torch.softmax(torch.randn(8, dtype=torch.float64), 0),
                    torch.tensor([0.3, -0.5, 0.2, 0.0, 1.1, -0.7, 0.4, 0.9], dtype=torch.float64)):
        for train, need_x, need_w, need_p in [(True, True, True, True), (True, True, False, True),
                                              (True, False, True, False), (False, True, True, True)]:
            results = []
            for fused in (False, True):
                m = copy.deepcopy(ref)
                m.fused = fused
                m.train(train)
                m.to(memory_format=torch.channels_last)
                for p in m.parameters():
                    p.requires_grad_(need_p)
                x = x0.clone().requires_grad_(need_x)
                w = weights.clone().requires_grad_(need_w)
                out = m(x, w)
                inputs = [t for t, need in ((x, need_x), (w, need_w)) if need] + (list(m.parameters()) if need_p else [])
                grads = torch.autograd.grad(out, inputs, go)
                results.append((out.detach(), grads, [b.clone() for b in m.buffers()]))
            (o_ref, g_ref, b_ref), (o_fast, g_fast, b_fast) = results
            assert torch.allclose(o_fast, o_ref, atol=1e-12)
            for a, b in zip(g_fast, g_ref):
                assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
            for a, b in zip(b_fast, b_ref):
                assert torch.equal(a, b) or torch.allclose(a.double(), b.double(), atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(9, 13), (22, 28), (4, 3)])
def test_depthwise_conv3x3_matches_conv2d(stride: int, size: tuple[int, int]) -> None:
    """space/depthwise.py's Function equals F.conv2d in value and both gradients, float64, for
    every dilation of the registry: plain, subsampled (stride 2, even dilation), explicitly
    padded (d > 4) and centre-tap-only (dilation ≥ map) paths."""
    import torch.nn.functional as F

    from gasnas.space.depthwise import depthwise_conv3x3

    torch.manual_seed(0)
    for d in (1, 2, 4, 8):
        x = torch.randn(2, 5, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(5, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        y = depthwise_conv3x3(x, w, stride, d)
        ref = F.conv2d(x, w, None, stride, d, d, 5)
        go = torch.randn_like(ref)
        assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-12)
        for got, want in zip(torch.autograd.grad(y, (x, w), go), torch.autograd.grad(ref, (x, w), go)):
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), f"dilation {d}"


def test_sepconv_takes_the_fast_depthwise_path_only_when_training_channels_last(monkeypatch) -> None:
    """SepConv (derived cells and the head) trains through depthwise.py on channels-last CPU
    inputs with the same gradients as the plain conv; NCHW, no-grad and traced calls keep
    nn.Conv2d (so exports and the latency table time the ordinary op)."""
    from gasnas.space import depthwise, ops

    calls = []
    real = depthwise.depthwise_conv3x3
    monkeypatch.setattr(ops, "depthwise_conv3x3", lambda *a: calls.append(a[2:]) or real(*a))
    torch.manual_seed(0)
    m = ops.SepConv(6, 8, stride=2, dilation=4).double()
    x0 = torch.randn(2, 6, 11, 14, dtype=torch.float64)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        m.zero_grad()
        x = x0.clone(memory_format=layout).requires_grad_()
        m(x).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
    assert calls == [(2, 4)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        m(x0.contiguous(memory_format=torch.channels_last))
    with warnings.catch_warnings():  # the ONNX exporter traces; torch.jit.trace itself is deprecated
        warnings.simplefilter("ignore")
        torch.jit.trace(m.eval(), x0.contiguous(memory_format=torch.channels_last).requires_grad_())
    assert calls == [(2, 4)]
