"""Mixed precision (`search.amp`, `train.amp`), the fused path under autocast and without host
syncs, BatchNorm conversion and device choice per distributed backend, the TF32 policy. All on
CPU: bf16 and fp16 autocast and `torch.amp.GradScaler("cpu")` run there."""

from __future__ import annotations

import copy

import pytest
import torch
from test_engine_support import (
    NoLatency,
    data_root,
    mixed_op_with_random_bn,
    shared_lut,
    tiny_config,
)

from gasnas.config import DEFAULT_OPS, Config, SearchConfig, SpaceConfig, load_config
from gasnas.engine import checkpoint as ckpt_io
from gasnas.engine import distributed as D
from gasnas.engine.amp import Precision, check_amp
from gasnas.engine.architect import Architect
from gasnas.engine.losses import build_criterion
from gasnas.engine.relaxation import Relaxation
from gasnas.engine.search import weight_step
from gasnas.errors import GasnasError
from gasnas.space import fused
from gasnas.space.cell import MixedOp
from gasnas.space.supernet import Supernet

TINY = dict(stem_channels=[4, 4, 8], stage_channels=[8, 16, 16], cells_per_stage=[1, 1, 1], head_channels=8)
CPU = torch.device("cpu")


def _fp16_unsupported() -> str | None:
    """Why fp16 + GradScaler cannot run on this CPU's torch (None: it can)."""
    try:
        check_amp("fp16", CPU, "search.amp")
    except GasnasError as exc:
        return str(exc)
    return None


def _search_parts(amp: str):
    torch.manual_seed(0)
    net = Supernet(SpaceConfig(**TINY), 3, recompute_stages=3)
    sc = SearchConfig(a_lr=0.01)
    crit = build_criterion(255, False, 0.7, 100)
    relax = Relaxation(sc, list(DEFAULT_OPS), 0)
    budget = NoLatency()
    arch = Architect(net, crit, sc, budget, relax, precision=Precision(amp, CPU, "search.amp"))
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
    return net, arch, budget, crit, relax, w_opt


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 48, generator=g), torch.randint(0, 3, (2, 32, 48), generator=g)


class _ApplyCounter:
    """Counts calls of the fused mixed op's autograd Function (to see which path ran)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = fused._MixedOp.apply

        def counting(*args):
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(fused._MixedOp, "apply", counting)


# --------------------------------------------------------------------------- config


def test_amp_and_tf32_keys_default_off_and_are_checked() -> None:
    cfg = load_config(None, [])
    assert (cfg.search.amp, cfg.train.amp, cfg.tf32) == ("none", "none", False)
    cfg = load_config(None, ["search.amp=bf16", "train.amp=fp16", "tf32=true"])
    assert (cfg.search.amp, cfg.train.amp, cfg.tf32) == ("bf16", "fp16", True)
    with pytest.raises(GasnasError, match="'train.amp': 'fp32' is not one of 'none', 'bf16', 'fp16'"):
        load_config(None, ["train.amp=fp32"])
    with pytest.raises(GasnasError, match="did you mean 'amp'"):
        load_config(None, ["search.ampp=bf16"])
    with pytest.raises(GasnasError, match="no autocast for device 'meta'"):
        Precision("bf16", "meta", "train.amp")


# --------------------------------------------------------------------------- search and training steps


def test_search_step_under_bf16_autocast(single_thread, monkeypatch) -> None:
    """A weight step and an architecture step under CPU bf16 autocast: finite losses; α and every
    GGM parameter get finite fp32 gradients (W a nonzero one; θ, φ are 0 until W leaves 0); α,
    the GGM and the weights stay fp32; the convs really ran in bf16, the fused Function not at
    all (bypassed under autocast)."""
    net, arch, budget, crit, relax, w_opt = _search_parts("bf16")
    counter = _ApplyCounter(monkeypatch)
    conv_dtypes: list[torch.dtype] = []
    net.stem[0][0].register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    x, y = _batch()
    with torch.no_grad():
        net_w, _ = relax.step_weights(net, 0, 0, 1)
    before = [p.detach().clone() for p in net.weight_parameters()]
    w = weight_step(net, w_opt, crit, x, y, 5.0, D.DistInfo(), net_w, Precision("bf16", CPU, "search.amp"))
    assert w["finite"] and torch.isfinite(torch.tensor(w["loss"]))
    assert any(not torch.equal(b, p) for b, p in zip(before, net.weight_parameters()))
    alphas = [a.detach().clone() for a in net.alphas]
    xa, ya = _batch(1)
    a = arch.step(xa, ya)
    assert a["finite"] and all(torch.isfinite(torch.tensor(a[k])) for k in ("loss", "ce", "lat_loss"))
    for p in net.alphas:
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for name, p in net.ggm.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    assert net.ggm.weight.weight.grad.abs().sum() > 0
    assert any(not torch.equal(b, p) for b, p in zip(alphas, net.alphas))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(g is not None and g.dtype == torch.float32 for g in budget.grads)  # CE gradients per cell
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    assert counter.calls == 0


def test_the_fused_path_runs_without_autocast(single_thread, monkeypatch) -> None:
    """The same step without autocast takes the fused Function (the counter above can see it)."""
    net, arch, *_ = _search_parts("none")
    counter = _ApplyCounter(monkeypatch)
    arch.step(*_batch())
    assert counter.calls > 0


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_under_autocast_and_its_scaler_in_the_checkpoint(amp, tmp_path_factory, single_thread,
                                                                  monkeypatch) -> None:
    """`gasnas train` with train.amp: finite losses and evaluation; fp16's GradScaler state is
    in last.pt (loads with weights_only=True) and a resumed run starts from it."""
    if amp == "fp16" and _fp16_unsupported():
        pytest.skip(_fp16_unsupported())
    from gasnas.engine import amp as amp_mod
    from gasnas.engine.runtime import MetricsLog
    from gasnas.engine.train import run_train
    from gasnas.space.genotype import derive_genotype

    data = data_root(tmp_path_factory)
    tmp = tmp_path_factory.mktemp(f"train_{amp}")
    cfg = tiny_config(data, tmp, "t", f"train.amp={amp}", "train.epochs=1")
    torch.manual_seed(1)
    derive_genotype(Supernet(cfg.space, cfg.data.num_classes), {"dataset": "test"}).save(tmp / "g.json")
    run_train(cfg, tmp / "g.json", show_progress=False)
    out = cfg.run_dir / "train"
    (row,) = MetricsLog(out / "metrics.jsonl").rows()
    assert row["steps"] == 3 and torch.isfinite(torch.tensor(row["loss"])) and row["val_miou"] is not None
    ck = ckpt_io.load(out / "last.pt", "train")
    if amp == "bf16":
        assert ck["scaler"] is None
        return
    assert ck["scaler"]["scale"] > 0 and set(ck["scaler"]) >= {"scale", "_growth_tracker"}
    ck["scaler"]["scale"] = 1024.0  # a scale no fresh scaler starts with
    ckpt_io.save(out / "last.pt", ck)
    loaded: list[float] = []
    original = amp_mod.Precision.load_state_dict

    def spy(self, state):
        original(self, state)
        loaded.append(self.scale)

    monkeypatch.setattr(amp_mod.Precision, "load_state_dict", spy)
    run_train(tiny_config(data, tmp, "t", f"train.amp={amp}", "train.epochs=2"), None, resume=out,
              show_progress=False)
    assert loaded == [1024.0]
    assert len(MetricsLog(out / "metrics.jsonl").rows()) == 2


def test_search_under_fp16_keeps_both_scalers_and_resumes_them(tmp_path_factory, single_thread) -> None:
    """`gasnas search` with search.amp=fp16 end to end: one GradScaler per optimizer, both in the
    checkpoint, both restored on resume."""
    if _fp16_unsupported():
        pytest.skip(_fp16_unsupported())
    from gasnas.engine.runtime import setup
    from gasnas.engine.search import CHECKPOINT, SearchRun, prepare_run_dir, run_search

    data, lut = data_root(tmp_path_factory), shared_lut(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("search_fp16")
    cfg = tiny_config(data, tmp, "s", f"latency.lut={lut}", "search.amp=fp16")
    assert run_search(cfg, show_progress=False).is_file()
    path = cfg.run_dir / CHECKPOINT
    ck = ckpt_io.load(path, "search")
    assert ck["w_scaler"]["scale"] > 0 and ck["a_scaler"]["scale"] > 0
    ck["w_scaler"]["scale"], ck["a_scaler"]["scale"] = 512.0, 256.0
    ckpt_io.save(path, ck)
    rt = setup(cfg)
    run_dir, resumed = prepare_run_dir(cfg, cfg.run_dir, rt)
    run = SearchRun(cfg, rt, run_dir, resumed, show_progress=False)
    assert (run.w_amp.scale, run.a_amp.scale) == (512.0, 256.0)


# --------------------------------------------------------------------------- fp16 + GradScaler


def test_fp16_gradscaler_step_on_cpu(single_thread, tmp_path) -> None:
    """fp16 autocast + GradScaler on CPU: a finite step updates the weights; an overflowing
    gradient skips the update and halves the scale; the state round-trips a checkpoint that
    loads with weights_only=True."""
    reason = _fp16_unsupported()
    if reason:
        pytest.skip(reason)
    net, arch, _, crit, relax, w_opt = _search_parts("fp16")
    amp = Precision("fp16", CPU, "search.amp")
    x, y = _batch()
    before = [p.detach().clone() for p in net.weight_parameters()]
    w = weight_step(net, w_opt, crit, x, y, 5.0, D.DistInfo(), None, amp)
    assert w["finite"] and any(not torch.equal(b, p) for b, p in zip(before, net.weight_parameters()))
    assert arch.step(*_batch(1))["finite"]
    assert all(torch.isfinite(a.grad).all() for a in net.alphas)

    scale = amp.scale
    before = [p.detach().clone() for p in net.weight_parameters()]
    p0 = net.weight_parameters()[0]
    p0.register_hook(lambda g: torch.full_like(g, float("inf")))  # an overflowing gradient
    weight_step(net, w_opt, crit, x, y, 5.0, D.DistInfo(), None, amp)
    assert amp.scale == scale * 0.5
    assert all(torch.equal(b, p) for b, p in zip(before, net.weight_parameters()))

    path = ckpt_io.save(tmp_path / "scaler.pt", {"kind": "search", "w_scaler": amp.state_dict()})
    again = Precision("fp16", CPU, "search.amp")
    again.load_state_dict(ckpt_io.load(path, "search")["w_scaler"])
    assert again.scale == amp.scale


# --------------------------------------------------------------------------- fused vs plain


def test_fused_and_plain_supernet_agree_under_bf16_autocast(single_thread) -> None:
    """Under bf16 autocast the fused supernet runs the plain modules, so it and the plain
    reference agree to float rounding of the layout (channels-last vs NCHW kernels), in train
    mode (batch statistics) and eval mode. Against fp32, in eval mode, the bf16 logits stay
    within 2% of the fp32 logits' RMS (bf16 keeps 8 significant bits, ~0.4% per rounding;
    0.2-0.3% is typical on this tiny net). In train mode the coarsest maps of a 32x48 input
    hold 4 values per channel and BatchNorm over so few amplifies rounding, so that
    comparison is left to the eval-mode one."""
    torch.manual_seed(0)
    space = SpaceConfig(**TINY)
    fast = Supernet(space, 3, fast=True, recompute_stages=3)
    ref = Supernet(space, 3, fast=False)
    ref.load_state_dict(fast.state_dict())
    x, _ = _batch()
    for train in (True, False):
        fast.train(train)
        ref.train(train)
        with torch.no_grad():
            y32 = ref(x) if not train else None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yf, yr = fast(x), ref(x)
        assert yf.dtype == yr.dtype == torch.bfloat16
        rms = yr.float().pow(2).mean().sqrt()
        assert (yf.float() - yr.float()).pow(2).mean().sqrt() <= 1e-3 * rms
        if y32 is not None:
            assert (yf.float() - y32).pow(2).mean().sqrt() <= 0.02 * y32.pow(2).mean().sqrt()


def test_depthwise_and_fused_wrappers_under_autocast(single_thread) -> None:
    """ops.SepConv (the derived net's separable convs) trains under bf16 autocast (its fast CPU
    backward is fp32 code and steps aside), and the fused wrappers refuse autocast outright."""
    from gasnas.space.depthwise import depthwise_conv3x3
    from gasnas.space.ops import SepConv

    torch.manual_seed(0)
    op = SepConv(6, 6, stride=2, dilation=2).to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 12, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x)
        d = depthwise_conv3x3(x, op[0].weight, 2, 2)
    y.float().square().mean().backward()
    assert y.dtype == d.dtype == torch.bfloat16
    assert torch.isfinite(x.grad).all() and op[0].weight.grad is not None
    mixed = MixedOp(DEFAULT_OPS, 6, 1)
    spec, _ = mixed.spec()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="autocast"):
        fused.mixed_op(spec, x.detach(), torch.softmax(torch.zeros(8), 0))


def test_folded_nonnegative_weights_match_the_plain_op_even_at_zero() -> None:
    """A search cell's mixed ops fold their (>= 0) weights into BatchNorm without reading their
    sign (`nonnegative_weights`); that is exact in float64, also for a weight that is exactly 0
    (clamped to the smallest normal number inside), which still gets its gradient; on stride-2
    edges FactorizedReduce folds as well."""
    for stride in (1, 2):
        ref = mixed_op_with_random_bn(stride, seed=stride)
        fast = copy.deepcopy(ref).to(memory_format=torch.channels_last)
        fast.fused, fast.nonnegative_weights = True, True
        weights = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
        weights[3] = 0.0  # conv_3x3: a softmax weight that underflowed
        x0 = torch.randn(3, 6, 9, 13, dtype=torch.float64)
        results = []
        for m in (ref, fast):
            x, w = x0.clone().requires_grad_(), weights.clone().requires_grad_()
            out = m(x, w)
            grads = torch.autograd.grad(out.square().sum(), [x, w, *m.parameters()])
            results.append((out.detach(), grads))
        (o_ref, g_ref), (o_fast, g_fast) = results
        assert torch.allclose(o_fast, o_ref, atol=1e-12)
        assert g_ref[1][3] != 0  # the zero weight's gradient is <dL/dy, op(x)>, not 0
        for a, b in zip(g_fast, g_ref):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_fused_forward_and_backward_make_no_host_sync(monkeypatch) -> None:
    """No host sync in the fused supernet's forward or backward, checked two ways. (1) On the
    meta device: meta tensors have no data, so any .item(), bool(), tolist() or data-dependent
    op (nonzero, masked_select) raises, C++-side ones included; and the non-CPU branches run,
    as on CUDA. (2) On CPU, with Tensor.item / __bool__ / __float__ / __int__ / tolist made to
    raise, the fused Function runs forward and backward."""
    with pytest.raises(RuntimeError):  # what (1) would catch, e.g. the sign test fold used to make
        bool((torch.ones(3, device="meta") > 0).all())
    space = SpaceConfig(**TINY)
    torch.manual_seed(0)
    meta = Supernet(space, 3, recompute_stages=3).to("meta")
    out = meta(torch.empty(2, 3, 32, 48, device="meta"))
    out.sum().backward()
    assert out.shape == (2, 3, 32, 48) and all(a.grad is not None for a in meta.alphas)

    counter = _ApplyCounter(monkeypatch)
    net = Supernet(space, 3, recompute_stages=3)
    x, _ = _batch()

    def sync(*args, **kwargs):
        raise AssertionError("host sync in the fused forward/backward")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    loss = net(x).square().mean()
    loss.backward()
    monkeypatch.undo()
    assert counter.calls > 0 and all(a.grad is not None for a in net.alphas)


# --------------------------------------------------------------------------- devices and backends


def test_batchnorm_conversion_per_backend() -> None:
    """nccl: nn.SyncBatchNorm (convert_sync_batchnorm); gloo: GlobalBatchNorm2d. Unit level, no
    process group: both keep the parameter objects and the state_dict keys."""
    assert D.batchnorm_converter("nccl") == torch.nn.SyncBatchNorm.convert_sync_batchnorm
    assert D.batchnorm_converter("gloo") is D.sync_batchnorm
    for backend, kind in (("nccl", torch.nn.SyncBatchNorm), ("gloo", D.GlobalBatchNorm2d)):
        torch.manual_seed(0)
        net = Supernet(SpaceConfig(**TINY), 3)
        params = {id(p) for p in net.parameters()}
        keys = list(net.state_dict())
        out = D.convert_batchnorm(net, backend)
        bns = [m for m in out.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert bns and all(type(m) is kind for m in bns), backend
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in out.modules()) or backend == "nccl"
        assert {id(p) for p in out.parameters()} == params and list(out.state_dict()) == keys
    assert D.convert_batchnorm(torch.nn.BatchNorm2d(4), "nccl").__class__ is torch.nn.SyncBatchNorm
    assert (D.backend_for("cuda"), D.backend_for("cpu")) == ("nccl", "gloo")


def test_device_per_local_rank(monkeypatch) -> None:
    """cuda:LOCAL_RANK when CUDA is asked for and present (cuda:0 without LOCAL_RANK), cpu
    otherwise; `device: cuda` resolves the same way."""
    from gasnas.engine.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert D.rank_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert D.rank_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert D.rank_device("cuda") == torch.device("cuda", 0) and D.env_local_rank() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.rank_device("cuda") == torch.device("cpu")
    with pytest.raises(GasnasError, match="CUDA is not available"):
        resolve_device("cuda")


def test_tf32_policy_is_applied_at_start_up() -> None:
    from gasnas.engine.runtime import setup

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    try:
        setup(Config(tf32=True))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        setup(Config())  # the default: neither
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.backends.cudnn.benchmark = saved[2]
        torch.use_deterministic_algorithms(saved[3])
