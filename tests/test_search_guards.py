"""The pieces that make the search search: a GGM that carries information, the sampled
(Gumbel) relaxation, the latency warm-in / ramp / budget policy, the P-DARTS guards."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from test_engine_support import NoLatency

from gasnas.config import LatencyConfig, SearchConfig, SpaceConfig
from gasnas.engine.architect import Architect
from gasnas.engine.losses import build_criterion
from gasnas.engine.relaxation import Relaxation, temperature
from gasnas.engine.search import changed_fraction, kept_edges, stable_fraction
from gasnas.ggm import GCNGuidedModule, adjacency_entropy
from gasnas.latency.budget import LAMBDA_RANGE, LatencyBudget
from gasnas.space.cell import PathSample
from gasnas.space.genotype import CellGene, Genotype, derive_cell
from gasnas.space.supernet import Supernet

TINY = dict(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1], head_channels=8)


def _architect(mode: str = "adjacent", relaxation: str = "softmax", **search):
    torch.manual_seed(0)
    space = SpaceConfig(**TINY)
    space.ggm.mode = mode
    net = Supernet(space, 3)
    sc = SearchConfig(relaxation=relaxation, a_lr=0.01, **search)
    crit = build_criterion(255, False, 0.7, 100)
    return net, Architect(net, crit, sc, NoLatency(), Relaxation(sc, list(space.ops), 0))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 48, generator=g), torch.randint(0, 3, (2, 32, 48), generator=g)


# --------------------------------------------------------------------------- GGM


@pytest.mark.parametrize("mode", ["adjacent", "global"])
def test_ggm_starts_at_identity_and_learns_edge_specific_information(mode: str, single_thread) -> None:
    net, arch = _architect(mode)
    alphas = [a.detach().clone() for a in net.alphas]
    assert all(torch.equal(a, b) for a, b in zip(net.guided_alphas(), alphas))  # α' = α at the start
    theta0 = [p.detach().clone() for p in (net.ggm.theta.weight, net.ggm.phi.weight)]
    x, y = _batch()
    for _ in range(6):
        arch.step(x, y)
    # every GGM parameter gets a gradient (θ and φ once W has left zero)
    for name, p in net.ggm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # no weight decay on the GGM's group, and θ, φ moved (a decay alone would only shrink them)
    ggm_group = next(g for g in arch.optimizer.param_groups if g["params"][0] is net.ggm.theta.weight)
    assert ggm_group["weight_decay"] == 0.0
    for before, p in zip(theta0, (net.ggm.theta.weight, net.ggm.phi.weight)):
        assert (p.detach() - before).abs().max() > 1e-3
    # the adjacency rows are measurably non-uniform at α's own scale (~1e-3 .. 1e-2)
    graph = net.ggm.graphs(list(net.alphas))[0]
    a = net.ggm.adjacency(graph.detach())
    assert (a - 1.0 / a.shape[1]).abs().max() > 1e-2
    assert adjacency_entropy(net.ggm, list(net.alphas)) < 0.999
    # α' − α differs from edge to edge, and has no per-cell common mode
    with torch.no_grad():
        deltas = [g - a for g, a in zip(net.guided_alphas(), net.alphas)]
    assert max(float(d.std(dim=0).max()) for d in deltas[1:]) > 1e-4
    for d in deltas:
        assert d.mean(dim=0).abs().max() < 1e-6


def test_ggm_features_are_scale_free() -> None:
    torch.manual_seed(0)
    ggm = GCNGuidedModule(num_ops=5)
    x = torch.randn(8, 5)
    assert torch.allclose(ggm.adjacency(1e-3 * x), ggm.adjacency(x), atol=1e-5)


def test_ggm_none_keeps_alpha_and_has_no_graph(single_thread) -> None:
    net, arch = _architect("none")
    x, y = _batch()
    arch.step(x, y)
    assert all(torch.equal(g, a) for g, a in zip(net.guided_alphas(), net.alphas))
    assert adjacency_entropy(net.ggm, list(net.alphas)) is None


# --------------------------------------------------------------------------- Gumbel


def test_gumbel_runs_only_the_sampled_ops(single_thread) -> None:
    net, _ = _architect(relaxation="gumbel")
    relax = Relaxation(SearchConfig(relaxation="gumbel"), list(net.space.ops), 0)
    calls: dict[tuple[int, int], list[int]] = {}
    for k, cell in enumerate(net.cells):
        for e, mixed in enumerate(cell.mixed):
            for j, op in enumerate(mixed.ops):
                op.register_forward_hook(lambda m, i, o, key=(k, e), idx=mixed.active[j]: calls.setdefault(key, []).append(idx))
    net_w, _ = relax.step_weights(net, 0, 0, 1)
    assert all(isinstance(w, PathSample) for w in net_w)
    x, _ = _batch()
    with net.using(net_w):
        net(x)
    for k, w in enumerate(net_w):
        for e, op_index in enumerate(w.index):
            free = net.space.ops[op_index] == "none"
            assert calls.get((k, e), []) == ([] if free else [op_index]), (k, e)


def test_gumbel_gradients_reach_alpha_and_ggm_through_the_straight_through_estimator(single_thread) -> None:
    net, arch = _architect(relaxation="gumbel")
    with torch.no_grad():
        net.ggm.weight.weight.normal_(std=0.1)
    x, y = _batch()
    parts = arch.loss(x, y, 0, 0, 1)
    parts["loss"].backward()
    for k, a in enumerate(net.alphas):
        assert a.grad is not None and a.grad.abs().sum() > 0, k
        assert (a.grad != 0).sum() > 1  # the whole row, not only the drawn op's entry
    for name, p in net.ggm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _ran_ops_help_alike(paths: list[PathSample]) -> torch.Tensor:
    """A loss under which every op that ran on an edge helps exactly alike: Σ over the ops that
    ran (the drawn one and, for `pair`, its rival) of their straight-through weight."""
    total = torch.zeros(())
    for p in paths:
        ran = torch.tensor(p.index)[:, None] if p.rivals is None else torch.tensor([p.index, p.rivals]).T
        total = total + p.weights.gather(-1, ran).sum()
    return total


def test_pair_gradient_compares_two_drawn_ops_and_has_no_favourite() -> None:
    """`pair`: two distinct ops per edge, the forward value one-hot on the first, the gradient only
    on the pair and zero-sum; when both help alike it is zero, whereas GDAS's `sampled` gradient
    then still raises the drawn op (the favour that lets an early lead decide a search)."""
    net = Supernet(SpaceConfig(**TINY), 3)
    with torch.no_grad():
        for a in net.alphas:
            a.normal_()
    g = torch.Generator().manual_seed(0)
    paths = net.sample_pair(g)
    for p in paths:
        assert all(i != r for i, r in zip(p.index, p.rivals))
        assert torch.equal(p.weights.detach(), torch.zeros_like(p.weights).scatter(-1, torch.tensor(p.index)[:, None], 1.0))
    _ran_ops_help_alike(paths).backward()
    assert max(float(a.grad.abs().max()) for a in net.alphas) < 1e-6
    net.zero_grad(set_to_none=True)
    sum(p.weights[torch.arange(len(p.index)), p.index].sum() for p in net.sample_pair(g)).backward()
    for a in net.alphas:  # the drawn op alone helping: its α' rises, its rival's falls by as much
        assert (a.grad != 0).sum(-1).le(2).all() and a.grad.sum(-1).abs().max() < 1e-6
    net.zero_grad(set_to_none=True)
    _ran_ops_help_alike(net.sample_path(1.0, g)).backward()
    assert max(float(a.grad.abs().max()) for a in net.alphas) > 1e-2


def test_pair_runs_the_drawn_op_with_a_graph_and_its_rival_without(single_thread) -> None:
    net, arch = _architect(relaxation="gumbel", path_gradient="pair")
    ran: dict[tuple[int, int], list[tuple[int, bool]]] = {}
    for k, cell in enumerate(net.cells):
        for e, mixed in enumerate(cell.mixed):
            for j, op in enumerate(mixed.ops):
                op.register_forward_hook(lambda m, i, o, key=(k, e), idx=mixed.active[j]:
                                         ran.setdefault(key, []).append((idx, torch.is_grad_enabled())))
    x, y = _batch()
    weights, _ = arch.relaxation.step_weights(net, 0, 0, 1, arch=True)
    with net.using(weights):
        torch.nn.functional.cross_entropy(net(x), y).backward()
    ops = list(net.space.ops)
    for k, w in enumerate(weights):
        for e, (drawn, rival) in enumerate(zip(w.index, w.rivals)):
            want = [(i, grad) for i, grad in ((drawn, True), (rival, False)) if ops[i] != "none"]
            assert sorted(ran.get((k, e), [])) == sorted(want), (k, e)
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas)


def test_uniform_weight_path_draws_every_op_alike_whatever_alpha_says() -> None:
    net = Supernet(SpaceConfig(**TINY), 3)
    with torch.no_grad():
        for a in net.alphas:
            a.zero_()
            a[:, 1] = 20.0  # α' all but certain of op 1
    n_ops = len(net.space.ops)
    counts = {name: torch.zeros(n_ops) for name in ("alpha", "uniform")}
    for name in counts:
        relax = Relaxation(SearchConfig(relaxation="gumbel", weight_path=name), list(net.space.ops), 0)
        for i in range(40):
            with torch.no_grad():
                weights, _ = relax.step_weights(net, 0, i, 40)
            for w in weights:
                counts[name] += torch.bincount(torch.tensor(w.index), minlength=n_ops)
                assert not w.weights.requires_grad
    assert counts["alpha"][1] == counts["alpha"].sum()
    share = counts["uniform"] / counts["uniform"].sum()
    assert (share - 1 / n_ops).abs().max() < 0.04
    # the architecture step still draws from α'
    relax = Relaxation(SearchConfig(relaxation="gumbel", weight_path="uniform"), list(net.space.ops), 0)
    assert all(set(w.index) == {1} for w in relax.step_weights(net, 0, 0, 1, arch=True)[0])
    # the uniform weight step needs neither α' nor E[Lat]: the GGM does not run for it
    ran = []
    net.guided_alphas = lambda: ran.append(1)
    assert relax.step_weights(net, 0, 0, 1)[1] == [] and not ran


@pytest.mark.parametrize("relaxation", ["softmax", "gumbel"])
def test_derivable_expectation_gives_none_no_latency_pull(relaxation: str) -> None:
    """latency.expectation=derivable: E[Lat] weights are each edge's softmax over the ops a
    derived net can keep, so `none` gets no latency gradient and the rest sums to one."""
    net, _ = _architect(relaxation=relaxation)
    ops = list(net.space.ops)
    none, skip = ops.index("none"), ops.index("skip_connect")
    for cap, dropped in ((None, [none]), (1, [none, skip])):
        sc = SearchConfig(relaxation=relaxation, max_skip_per_cell=cap)
        relax = Relaxation(sc, ops, 0, expectation="derivable")
        net.zero_grad(set_to_none=True)
        _, lat_w = relax.step_weights(net, 0, 0, 1, arch=True)
        costs = [torch.arange(1.0, 1.0 + len(ops)).expand_as(w) for w in lat_w]
        total = sum((w * c).sum() for w, c in zip(lat_w, costs))
        total.backward()
        for a, w in zip(net.alphas, lat_w):
            assert torch.all(w[:, dropped] == 0), cap
            assert torch.allclose(w.sum(dim=-1), torch.ones(w.shape[0], dtype=w.dtype))
            assert torch.all(a.grad[:, dropped] == 0) and a.grad.abs().sum() > 0
            if cap is None:
                assert torch.all(a.grad[:, skip] != 0)
    mixture = Relaxation(SearchConfig(relaxation=relaxation), ops, 0)
    _, mix_w = mixture.step_weights(net, 0, 0, 1, arch=True)
    assert all(bool((w[:, none] > 0).all()) for w in mix_w)


def test_gumbel_draws_are_fixed_by_the_seed_and_resume_with_the_generator() -> None:
    net = Supernet(SpaceConfig(**TINY), 3)
    sc = SearchConfig(relaxation="gumbel")

    def draws(relax, n):
        return [[w.index for w in relax.step_weights(net, 0, i, n)[0]] for i in range(n)]

    a, b, c = (Relaxation(sc, list(net.space.ops), s) for s in (0, 0, 1))
    first = draws(a, 3)
    assert first == draws(b, 3) and first != draws(c, 3)
    state = a.state_dict()
    later = draws(a, 2)
    d = Relaxation(sc, list(net.space.ops), 5)
    d.load_state_dict(state)
    assert draws(d, 2) == later


def test_temperature_anneals_from_tau_max_to_tau_min() -> None:
    sc = SearchConfig(epochs=6, warmup_epochs=2, tau_max=4.0, tau_min=0.5)
    assert temperature(sc, 0, 0, 10) == temperature(sc, 1, 9, 10) == 4.0
    assert temperature(sc, 2, 0, 10) == 4.0
    assert temperature(sc, 5, 9, 10) == pytest.approx(0.5)
    taus = [temperature(sc, e, s, 10) for e in range(2, 6) for s in range(10)]
    assert all(b < a for a, b in zip(taus, taus[1:]))


def test_skip_dropout_drops_whole_skip_weights_with_its_probability() -> None:
    net = Supernet(SpaceConfig(**TINY), 3)
    ops = list(net.space.ops)
    relax = Relaxation(SearchConfig(skip_dropout=0.4), ops, 0)
    skip = ops.index("skip_connect")
    others = [j for j in range(len(ops)) if j != skip]
    kept = []
    with torch.no_grad():
        soft = net.op_weights()
        for i in range(50):
            weights, latency = relax.step_weights(net, 0, i, 50)
            for w, s, lat in zip(weights, soft, latency):
                assert torch.equal(w[:, others], s[:, others]) and torch.equal(lat, s)  # only skip is dropped
                ratio = w[:, skip] / s[:, skip]
                assert all(abs(float(r)) < 1e-6 or abs(float(r) - 1 / 0.6) < 1e-5 for r in ratio)  # inverted scaling
                kept += [float(r) > 0.5 for r in ratio]
    share = sum(kept) / len(kept)
    assert 0.5 < share < 0.7  # kept with probability 0.6


def test_shared_alphas_give_one_alpha_per_cell_type(single_thread) -> None:
    from gasnas.space.genotype import derive_genotype

    space = SpaceConfig(**TINY, alpha_sharing="shared")
    torch.manual_seed(0)
    net = Supernet(space, 3)
    assert len(net.alphas) == 2 and net.cell_alpha == [0, 1, 0, 1, 0]  # normal, reduction, ...
    with torch.no_grad():
        for a in net.alphas:
            a.normal_()
        net.ggm.weight.weight.normal_(std=0.1)
    w = net.op_weights()
    assert torch.equal(w[0], w[2]) and torch.equal(w[2], w[4]) and torch.equal(w[1], w[3])
    assert torch.equal(net.guided_alphas()[0], net.alphas[0])  # α'_normal = α_normal
    assert not torch.equal(net.guided_alphas()[1], net.alphas[1])  # the GGM passes normal → reduction
    g = derive_genotype(net)
    assert g.cells[0].edges == g.cells[2].edges == g.cells[4].edges and g.cells[1].edges == g.cells[3].edges
    x, y = _batch()
    crit = build_criterion(255, False, 0.7, 100)
    crit(net(x), y, None).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas)


def test_alpha_lr_decays_by_cosine_over_the_search_epochs(single_thread) -> None:
    _, arch = _architect(epochs=4, warmup_epochs=1, a_lr_min=0.001)
    assert arch.lr(0, 0, 5) == arch.lr(1, 0, 5) == pytest.approx(0.01)
    assert arch.lr(3, 4, 5) == pytest.approx(0.001)
    lrs = [arch.lr(e, s, 5) for e in range(1, 4) for s in range(5)]
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    x, y = _batch()
    arch.step(x, y, 3, 4, 5)
    assert all(g["lr"] == pytest.approx(0.001) for g in arch.optimizer.param_groups)
    _, constant = _architect()
    assert constant.lr(7, 3, 5) == 0.01


@pytest.mark.parametrize("path_gradient", ["sampled", "all_ops"])
def test_path_gradient_reaches_the_drawn_op_only_or_every_op(path_gradient: str, single_thread) -> None:
    net, arch = _architect(relaxation="gumbel", path_gradient=path_gradient)
    net_w, _ = arch.relaxation.step_weights(net, 0, 0, 1, arch=True)
    assert all(w.all_ops == (path_gradient == "all_ops") for w in net_w)
    for w in net_w:
        w.weights.retain_grad()
    x, y = _batch()
    crit = build_criterion(255, False, 0.7, 100)
    with net.using(net_w):
        out = net(x)
    crit(out, y, None).backward()
    free = [i for i, op in enumerate(net.space.ops) if op == "none"]
    for w in net_w:
        g = w.weights.grad
        for e, drawn in enumerate(w.index):
            others = [i for i in range(g.shape[1]) if i != drawn and i not in free]
            if path_gradient == "sampled":
                assert (g[e, others] == 0).all()
            else:
                assert (g[e, others] != 0).all()
    # the forward value is the single path either way
    with torch.no_grad(), net.using([type(w)(w.weights, w.index, False) for w in net_w]):
        assert torch.allclose(net(x), out.detach(), atol=1e-5)


# --------------------------------------------------------------------------- λ and the budget


def _budget(loss="linear", **search):
    est = SimpleNamespace(stages=[0, 1, 1, 2], expected_ms=None)
    lat = LatencyConfig(loss=loss, target_ms=10.0 if loss == "target" else None, weight=0.5, lambda_lr=0.1)
    return LatencyBudget(lat, SearchConfig(epochs=10, warmup_epochs=2, **search), est)


def test_latency_warm_in_then_ramp() -> None:
    b = _budget(latency_warmin_epochs=1, latency_ramp_epochs=2)
    assert b.ramp(0, 5, 10) == b.ramp(2, 9, 10) == 0.0  # warm-up, then one warm-in epoch
    assert b.ramp(3, 0, 10) == pytest.approx(0.05)
    assert b.ramp(4, 0, 10) == pytest.approx(0.55)
    assert b.ramp(5, 0, 10) == b.ramp(9, 9, 10) == 1.0
    assert b.lam_eff(3, 0, 10) == pytest.approx(0.5 * 0.05)
    assert _budget(latency_warmin_epochs=0, latency_ramp_epochs=0).ramp(2, 0, 10) == 1.0


def test_budget_adapts_lambda_every_step_toward_the_target() -> None:
    b = _budget("target")
    b.after_step(expected_ms=20.0, predicted_ms=12.0, ramp=0.0)
    assert b.lam == 1.0 and b.budget_scale == pytest.approx(20 / 12)  # no λ change before the ramp
    b.after_step(20.0, 12.0, ramp=1.0)
    assert b.lam == pytest.approx(math.exp(0.1 * 0.2))  # d/T - 1 = 0.2
    lam = b.lam
    b.end_epoch(predicted_ms=12.0, measured_ms=6.0)  # the net measured half its prediction
    assert b.calibration == 0.5
    b.after_step(20.0, 12.0, ramp=1.0)  # d = 6 ms: under budget, λ falls
    assert b.lam == pytest.approx(lam * math.exp(0.1 * -0.4)) and b.budget_scale == pytest.approx(20 / 6)
    lam = b.lam
    b.after_step(20.0, 1e6, ramp=1.0)  # far over budget: one step moves λ by at most e^lambda_lr
    assert b.lam == pytest.approx(lam * math.exp(0.1))
    for _ in range(1000):
        b.after_step(20.0, 1e6, ramp=1.0)
    assert b.lam == pytest.approx(LAMBDA_RANGE)  # capped
    restored = _budget("target")
    restored.load_state_dict(b.state_dict())
    assert restored.state_dict() == b.state_dict()


def test_calibration_is_the_median_over_the_last_distinct_nets_and_resumes() -> None:
    b = _budget("target", calibration_window=3)
    for net, measured in (("a", 9.0), ("b", 12.0), ("c", 6.0)):  # ratios 0.9, 1.2, 0.6 of 10 ms
        b.end_epoch(predicted_ms=10.0, measured_ms=measured, net=net)
    assert b.calibration == pytest.approx(0.9)  # one noisy epoch does not move the limit
    assert b.predicted_limit_ms() == pytest.approx(10.0 / 0.9)
    b.end_epoch(10.0, 11.0, "d")  # window b, c, d: the oldest net leaves
    assert b.calibration == pytest.approx(1.1)
    b.end_epoch(10.0, None, "e")  # an epoch without a measurement changes nothing
    assert b.calibration == pytest.approx(1.1)
    for _ in range(5):  # the same net again (warm-up: α unchanged) replaces its entry, it does not fill the window
        b.end_epoch(10.0, 7.0, "d")
    assert [k for k, _ in b.calibrations] == ["b", "c", "d"] and b.calibration == pytest.approx(0.7)
    restored = _budget("target", calibration_window=3)
    restored.load_state_dict(b.state_dict())
    restored.end_epoch(10.0, 10.0, "f")
    b.end_epoch(10.0, 10.0, "f")
    assert restored.calibration == b.calibration == pytest.approx(0.7)  # median of 0.6, 0.7, 1.0
    old = _budget("target", calibration_window=3)  # a checkpoint from before the window
    old.load_state_dict({"lambda": 1.0, "calibration": 0.8})
    assert old.calibrations == [("", 0.8)] and old.calibration == 0.8
    one = _budget("target", calibration_window=1)
    assert one.calibration == 1.0
    one.end_epoch(10.0, 5.0, "a")
    one.end_epoch(10.0, 12.0, "b")
    assert one.calibration == pytest.approx(1.2)  # window 1: the last net alone


def test_per_stage_balance_scales_the_latency_gradient_not_its_value() -> None:
    b = _budget("linear", balance_latency=True)
    b.record_ce_gradients([torch.full((2, 3), 4.0), torch.full((2, 3), 2.0), torch.full((2, 3), 2.0),
                           torch.full((2, 3), 0.5)])
    bal = b.cell_balance()
    assert bal == pytest.approx([4 / 2.125, 2 / 2.125, 2 / 2.125, 0.5 / 2.125])
    assert sum(bal) / len(bal) == pytest.approx(1.0)
    costs = [torch.full((2, 3), 1.0) for _ in range(4)]
    b.estimator = SimpleNamespace(
        stages=[0, 1, 1, 2],
        expected_ms=lambda ws: 3.0 + sum((w * c).sum() for w, c in zip(ws, costs)),
        cell_ms=lambda ws: [(w * c).sum() for w, c in zip(ws, costs)])
    ws = [torch.full((2, 3), 0.1, requires_grad=True) for _ in range(4)]
    loss, expected = b.loss(ws, 9, 0, 10)
    assert float(loss.detach()) == pytest.approx(0.5 * float(expected.detach()))  # the value is λ·E
    loss.backward()
    assert [float(w.grad[0, 0]) for w in ws] == pytest.approx([0.5 * x for x in bal])
    assert _budget("linear", balance_latency=False).cell_balance() is None


# --------------------------------------------------------------------------- derivation and convergence


def test_max_skip_per_cell_keeps_the_strongest_skips() -> None:
    ops = ["none", "skip_connect", "sep_conv_3x3", "conv_3x3"]
    # nodes=2 → edges (0,0) (1,0) (0,1) (1,1) (2,1); every edge prefers skip
    w = torch.tensor([[0.0, 0.70, 0.20, 0.10],
                      [0.0, 0.90, 0.02, 0.08],
                      [0.0, 0.60, 0.10, 0.30],
                      [0.0, 0.80, 0.15, 0.05],
                      [0.0, 0.10, 0.50, 0.40]])
    free = derive_cell(w, ops, nodes=2)
    assert [op for *_, op in free] == ["skip_connect"] * 4
    capped = derive_cell(w, ops, nodes=2, max_skip=1)
    assert capped == [(0, 0, "sep_conv_3x3"), (1, 0, "skip_connect"), (0, 1, "conv_3x3"), (1, 1, "sep_conv_3x3")]
    assert [op for *_, op in derive_cell(w, ops, nodes=2, max_skip=0)].count("skip_connect") == 0


def _fit_case():
    """One cell, nodes=2 (edges (0,0) (1,0) (0,1) (1,1) (2,1)); costs per op: skip 0, pool 1,
    sep 3, conv 9 ms on every edge; a fixed part of 10 ms."""
    ops = ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "conv_3x3"]
    space = SpaceConfig(ops=ops, nodes=2, cells_per_stage=[1], stage_channels=[16], stem_channels=[8, 8, 16])
    cost = torch.tensor([0.0, 0.0, 1.0, 3.0, 9.0]).repeat(5, 1)
    w = torch.tensor([[0.0, 0.05, 0.05, 0.10, 0.80],   # conv, sure of it
                      [0.0, 0.05, 0.05, 0.45, 0.45],   # conv by a hair over sep
                      [0.0, 0.02, 0.08, 0.10, 0.80],
                      [0.0, 0.02, 0.08, 0.40, 0.50],   # conv, sep close behind
                      [0.0, 0.01, 0.01, 0.01, 0.97]])
    w[1, 4] += 1e-3
    edges = [(0, 0, "conv_3x3"), (1, 0, "conv_3x3"), (0, 1, "conv_3x3"), (1, 1, "conv_3x3")]
    geno = Genotype(space, 11, [CellGene(False, edges)])

    def predict(g):
        index = {(0, 0): 0, (1, 0): 1, (0, 1): 2, (1, 1): 3, (2, 1): 4}
        return 10.0 + sum(float(cost[index[(s, d)], ops.index(o)]) for c in g.cells for s, d, o in c.edges)

    return geno, [w], SimpleNamespace(costs=[cost], predict=predict)


def test_fit_to_budget_swaps_the_least_preferred_ops_until_the_net_fits() -> None:
    from gasnas.latency.budget import fit_to_budget

    geno, weights, est = _fit_case()
    assert est.predict(geno) == 46.0
    same, swaps = fit_to_budget(geno, weights, est, limit_ms=50.0, max_skip=1)
    assert same is geno and swaps == 0  # already within the budget: the argmax net itself
    fitted, swaps = fit_to_budget(geno, weights, est, limit_ms=40.0, max_skip=1)
    # one swap saves 6 ms: the edge whose α' barely prefers conv over sep gives it up
    assert swaps == 1 and fitted.cells[0].edges[1] == (1, 0, "sep_conv_3x3")
    assert fitted.predicted_latency_ms == est.predict(fitted) == 40.0
    assert geno.cells[0].edges[1] == (1, 0, "conv_3x3")  # the argmax genotype is left as it was
    fitted, swaps = fit_to_budget(geno, weights, est, limit_ms=34.0, max_skip=1)
    assert [op for *_, op in fitted.cells[0].edges] == ["conv_3x3", "sep_conv_3x3", "conv_3x3", "sep_conv_3x3"]
    cheapest, _ = fit_to_budget(geno, weights, est, limit_ms=0.0, max_skip=1)
    ops = [op for *_, op in cheapest.cells[0].edges]
    assert ops.count("skip_connect") == 1 and ops.count("max_pool_3x3") == 3  # at most max_skip skips, never none
    assert cheapest.predicted_latency_ms == 13.0  # no swap left: the cheapest derivable net, above the limit


def test_alpha_margin_is_the_gap_between_the_two_likeliest_ops() -> None:
    from gasnas.engine.search import alpha_margin, alpha_spread

    w = torch.softmax(torch.tensor([[2.0, 1.5, -5.0, 0.0], [0.0, 0.0, 0.0, 0.0]]), -1)
    assert alpha_margin([w]) == pytest.approx([0.25])  # (0.5 + 0) / 2
    assert alpha_spread([w]) == pytest.approx([3.5])  # one op pushed far down: a large spread


def test_changed_and_stable_fractions() -> None:
    def geno(*ops):
        return Genotype(SpaceConfig(), 11, [CellGene(False, [(0, 0, ops[0]), (1, 0, ops[1])])])

    a, b, c = geno("conv_3x3", "skip_connect"), geno("conv_3x3", "sep_conv_3x3"), geno("conv_3x3", "skip_connect")
    assert changed_fraction(None, a) is None
    assert changed_fraction(kept_edges(a), b) == 0.5 and changed_fraction(kept_edges(a), c) == 0.0
    assert stable_fraction([a, b, c]) == 0.5 and stable_fraction([a, c]) == 1.0 and stable_fraction([a]) is None


def test_ggm_learns_at_its_own_fraction_of_alphas_rate(single_thread) -> None:
    net, arch = _architect(ggm_lr_scale=0.1, a_lr_min=0.001, epochs=4, warmup_epochs=1)
    x, y = _batch()
    arch.step(x, y, 2, 3, 10)
    alpha_group, ggm_group = arch.optimizer.param_groups
    assert alpha_group["lr"] == pytest.approx(arch.lr(2, 3, 10))
    assert ggm_group["lr"] == pytest.approx(0.1 * arch.lr(2, 3, 10))
    restored = _architect(ggm_lr_scale=0.1)[1]
    restored.load_state_dict(arch.state_dict())
    assert restored.optimizer.param_groups[1]["lr_scale"] == 0.1
