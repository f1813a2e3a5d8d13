"""The supernet's fast mixed op: one autograd Function per edge, lean in memory and in time.

`MixedOp(fused=True)` (the search default) computes Σ_o w_o · op_o(x) over the candidate ops in
one `torch.autograd.Function` (`mixed_op`) instead of one autograd node per conv, BatchNorm,
ReLU and product. It is the same function, with the same parameters and the same BatchNorm
running-statistics updates, as the plain loop (`fused=False`, kept as the reference); the
gradients are the same up to floating-point rounding. What it does differently:

* **Stores only what cannot be recomputed cheaply.** For backward it keeps the edge input x
  (shared with the other consumers of x), the output of each conv before its BatchNorm and the
  BatchNorm statistics. BatchNorm outputs, ReLU masks, depthwise outputs and max-pool indices
  are recomputed in backward (elementwise passes and depthwise convs, cheap next to the dense
  convs). Per edge that is 5 stored feature maps (conv_3x3: 1, separable branches: 4) instead
  of ~17 for the plain autograd graph (each separable branch keeps its depthwise output,
  its pointwise output and its ReLU output; max-pool keeps int64 indices).
* **Folds the op weight into BatchNorm.** w·ReLU(γx̂ + β) = ReLU(wγ·x̂ + wβ) for w > 0, so the
  weighted sum costs no extra pass and the op weight's gradient comes out of BatchNorm's own γ/β
  gradient reductions: ∂/∂w = Σ_c (γ_c ∂/∂γ'_c + β_c ∂/∂β'_c). Whether to fold is Python-side
  state, never read off the weights (`MixedSpec.fold`, from `MixedOp.nonnegative_weights`): a
  search cell's weights are softmax mixtures, ≥ 0 by construction, and fold; weights of any sign
  take the product after the ReLU. Looking at the weights' sign would cost a host sync per
  branch per edge on a GPU. A folded weight is clamped to the smallest positive normal number,
  so a softmax weight that underflowed to 0 still gets its gradient.
* **Separable branches together.** All separable branches' pointwise outputs go into one
  [N·H·W, branches·C] buffer (one matmul per branch, channels-last rows), normalised by one
  BatchNorm call over all branches' channels (BatchNorm is per channel, so this is each
  branch's own BatchNorm).
* **Fast depthwise backward** (`space/depthwise.py`): oneDNN's backward of dilated depthwise
  convs is 10-100x slower than their forward on CPU; the same sums are computed another way.
* **Only the gradients that are asked for.** The weight step freezes α (`frozen` in
  engine/architect.py): no op-weight gradients are computed. The α step freezes the weights:
  no weight gradients, no depthwise recomputation. The first cell's edges get no input
  gradient when nothing before them needs one.

Everything runs in channels-last memory layout. The fused path needs plain `nn.BatchNorm2d`
modules (with affine parameters); with `GlobalBatchNorm2d` (several processes) `MixedOp` uses
the plain loop, whose BatchNorm modules compute global statistics.

**Under autocast the fused path is bypassed** (`fused_allowed`): the callers (space/cell.py)
run the plain modules instead, which autocast casts op by op. The Functions here write fp32
buffers with `out=` matmuls and mix their saved tensors' dtypes in backward, so they are fp32
code; decorating them with `torch.amp.custom_fwd(cast_inputs=torch.float32)` would make them
safe but run the supernet's bulk in fp32, giving up what mixed precision is for. The wrappers
refuse to run under autocast rather than compute in a dtype they were not written for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gasnas.space.depthwise import autocast_active, dw_backward, dw_forward
from gasnas.space.ops import ConvBNReLU, FactorizedReduce, SepConv

CL = torch.channels_last


@dataclass
class MixedSpec:
    """Which branches of a mixed op the Function computes (indices into the op weights)."""

    stride: int
    identity: int | None = None
    pool: int | None = None  # max_pool_3x3 with as many output as input channels
    convs: list[tuple[int, ConvBNReLU]] = field(default_factory=list)
    seps: list[tuple[int, SepConv]] = field(default_factory=list)
    recompute: bool = False  # recompute the separable branches' pointwise outputs in backward
    fold: bool = False  # the op weights are >= 0 by construction: fold them into BatchNorm

    def finalize(self) -> MixedSpec:
        """Cache what forward/backward read (module lookups in Sequential are slow)."""
        self.src = []
        for _, m in self.convs:
            self.src += [(m[0], "weight"), (m[1], "weight"), (m[1], "bias")]
        for _, m in self.seps:
            self.src += [(m[0], "weight"), (m[1], "weight"), (m[2], "weight"), (m[2], "bias")]
        self.conv_bns = [m[1] for _, m in self.convs]
        self.sep_bns = [m[2] for _, m in self.seps]
        self.conv_geom = [(list(m[0].stride), list(m[0].padding), list(m[0].dilation)) for _, m in self.convs]
        self.conv_idx = [i for i, _ in self.convs]
        self.sep_idx = [i for i, _ in self.seps]
        self.sep_dil = [m[0].dilation[0] for _, m in self.seps]
        return self

    def params(self) -> list[torch.Tensor]:
        return [getattr(m, name) for m, name in self.src]

    def batchnorms(self) -> list[nn.Module]:
        return self.conv_bns + self.sep_bns


def fusable(m: nn.Module) -> str | None:
    """The kind of branch `mixed_op` can compute for op module `m`, or None."""
    if isinstance(m, nn.Identity):
        return "identity"
    if (type(m) is nn.MaxPool2d and m.kernel_size in (3, (3, 3)) and m.padding in (1, (1, 1))
            and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices):
        return "pool"
    if (type(m) is ConvBNReLU and len(m) == 3 and m[0].bias is None and m[0].groups == 1
            and type(m[2]) is nn.ReLU):
        return "conv"
    if (type(m) is SepConv and m[0].kernel_size == (3, 3) and m[0].padding == m[0].dilation
            and m[0].bias is None and m[1].bias is None and m[1].stride == (1, 1)):
        return "sep"
    return None


def spec_ready(spec: MixedSpec) -> bool:
    """Plain, affine, identically configured BatchNorm modules (not e.g. GlobalBatchNorm2d)."""
    bns = spec.batchnorms()
    if not bns:
        return True
    b0 = bns[0]
    return all(type(b) is nn.BatchNorm2d and b.affine and b.training == b0.training
               and b.track_running_stats == b0.track_running_stats and b.momentum == b0.momentum
               and b.eps == b0.eps for b in bns)


def fused_allowed(x: torch.Tensor) -> bool:
    """Whether the Functions here may run on `x`: not under autocast for x's device type (see the
    module docstring); the caller then runs the plain modules."""
    return not autocast_active(x)


def _refuse_autocast(x: torch.Tensor, what: str) -> None:
    if not fused_allowed(x):
        raise RuntimeError(f"{what}: the fused path is fp32 code and does not run under autocast; "
                           "check fused_allowed(x) and run the plain modules")


def mixed_op(spec: MixedSpec, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ over the spec's branches of weights[i] · branch_i(x) (see the module docstring)."""
    _refuse_autocast(x, "mixed_op")
    return _MixedOp.apply(spec, x, weights, *spec.params())


# ---------------------------------------------------------------------------------------------
# helpers

def _rows(t: torch.Tensor) -> torch.Tensor:
    """A channels-last [N, C, H, W] tensor as its [N·H·W, C] matrix (a view)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _image(rows: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `_rows`: [N·H·W, C] → channels-last [N, C, H, W] (a view)."""
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(_rows(a.contiguous(memory_format=CL)).reshape(-1),
                     _rows(b.contiguous(memory_format=CL)).reshape(-1))


def _sep_pointwise(spec: MixedSpec, x: torch.Tensor, params: list[torch.Tensor], ho: int, wo: int,
                   keep: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The separable branches up to their pointwise convs: one channels-last [N, branches·C,
    Ho, Wo] tensor (branch-major channels), and the depthwise outputs if `keep`."""
    n, c = x.shape[0], x.shape[1]
    nb = len(spec.seps)
    rows = x.new_empty(n * ho * wo, nb, c)
    ds = [] if keep else None
    for j, dil in enumerate(spec.sep_dil):
        dw, pw = params[4 * j], params[4 * j + 1]
        d = dw_forward(x, dw, spec.stride, dil)
        torch.mm(_rows(d), pw.view(c, c).t(), out=rows[:, j])
        if keep:
            ds.append(d)
    return _image(rows.view(-1, nb * c), n, ho, wo), ds


class _BN:
    """One BatchNorm call over the concatenated channels of `mods` (each normalises its own
    channels), with nn.BatchNorm2d's bookkeeping (running statistics, num_batches_tracked)."""

    def __init__(self, mods: list[nn.Module]) -> None:
        self.mods = mods
        b0 = mods[0]
        self.eps = b0.eps
        self.batch_stats = b0.training or (b0.running_mean is None and b0.running_var is None)

    def forward(self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, inplace: bool = False):
        """(y, stat_a, stat_b): y = BN(h) with affine (gamma, beta) (written over h if `inplace`,
        on CPU); the statistics for backward: (mean, invstd) of the batch, or the running
        (mean, var) used in eval."""
        mods, b0 = self.mods, self.mods[0]
        factor = 0.0 if b0.momentum is None else b0.momentum
        update = b0.training and b0.track_running_stats
        if update and b0.num_batches_tracked is not None:
            for b in mods:
                b.num_batches_tracked.add_(1)
            if b0.momentum is None:
                factor = 1.0 / float(b0.num_batches_tracked)
        rm = rv = None
        if (not b0.training or b0.track_running_stats) and b0.running_mean is not None:
            rm = b0.running_mean if len(mods) == 1 else torch.cat([b.running_mean for b in mods])
            rv = b0.running_var if len(mods) == 1 else torch.cat([b.running_var for b in mods])
        if inplace and h.device.type == "cpu":  # statistics first, then elementwise: safe in place
            mean, invstd = h.new_empty(0), h.new_empty(0)
            y, mean, invstd = torch.ops.aten.native_batch_norm.out(
                h, gamma, beta, rm, rv, self.batch_stats, factor, self.eps, out=h, save_mean=mean, save_invstd=invstd)
        else:
            y, mean, invstd = torch.native_batch_norm(h, gamma, beta, rm, rv, self.batch_stats, factor, self.eps)
        if update and rm is not None and len(mods) > 1:
            with torch.no_grad():
                for b, m_i, v_i in zip(mods, rm.chunk(len(mods)), rv.chunk(len(mods))):
                    b.running_mean.copy_(m_i)
                    b.running_var.copy_(v_i)
        if self.batch_stats:
            return y, mean, invstd
        return y, rm.clone(), rv.clone()

    def scale_shift(self, a: torch.Tensor, b: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor):
        """Per channel (scale, shift) with BN(h) = h·scale + shift."""
        invstd = b if self.batch_stats else torch.rsqrt(b + self.eps)
        scale = invstd * gamma
        return scale, beta - a * scale

    def backward(self, g: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, a: torch.Tensor,
                 b: torch.Tensor, mask: list[bool]):
        """(grad_h, grad_gamma, grad_beta); on CPU grad_h overwrites g (a temporary: per-channel
        sums first, then elementwise, so in place is safe), which saves a feature-map buffer."""
        args = (None, None, a, b, True) if self.batch_stats else (a, b, None, None, False)
        if mask[0] and g.device.type == "cpu":
            out1, out2 = gamma.new_empty(gamma.shape), gamma.new_empty(gamma.shape)
            gh, gg, gb = torch.ops.aten.native_batch_norm_backward.out(
                g, h, gamma, *args, self.eps, [True, True, True], out0=g, out1=out1, out2=out2)
            return gh, (gg if mask[1] else None), (gb if mask[2] else None)
        return torch.ops.aten.native_batch_norm_backward(g, h, gamma, *args, self.eps, mask)


def _relu_grad(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad where y > 0, else 0; written over y (a recomputed temporary) on CPU."""
    if y.device.type == "cpu":
        return torch.ops.aten.threshold_backward.grad_input(grad, y, 0, grad_input=y)
    return torch.ops.aten.threshold_backward(grad, y, 0)


def _folded(w: torch.Tensor) -> torch.Tensor:
    """An op weight (>= 0) as folded into BatchNorm's affine parameters: clamped off 0 so that
    ReLU(w·z) keeps z's sign pattern, the mask its gradient needs (no host sync: elementwise)."""
    return w.clamp_min(torch.finfo(w.dtype).tiny)


class _MixedOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: MixedSpec, x: torch.Tensor, weights: torch.Tensor, *params: torch.Tensor):
        x = x.contiguous(memory_format=CL)
        n, c, hgt, wid = x.shape
        s = spec.stride
        ho, wo = (hgt + s - 1) // s, (wid + s - 1) // s
        out = None
        saved: list[torch.Tensor] = []
        ctx.folds = []
        ctx.bns = []
        k = 0
        for idx, bn_mod, (stride, padding, dilation) in zip(spec.conv_idx, spec.conv_bns, spec.conv_geom):
            wc, gamma, beta = params[k:k + 3]  # conv → BN → ReLU, weighted
            k += 3
            fold = spec.fold
            w = _folded(weights[idx]) if fold else weights[idx]
            bn = _BN([bn_mod])
            h = F.conv2d(x, wc, None, stride, padding, dilation).contiguous(memory_format=CL)
            y, sa, sb = bn.forward(h, gamma * w if fold else gamma, beta * w if fold else beta)
            y.relu_()
            if out is None:
                out = y if fold else y * w
            elif fold:
                out.add_(y)
            else:
                out.addcmul_(y, w)
            saved += [h, sa, sb]
            ctx.folds.append(fold)
            ctx.bns.append(bn)
        if spec.seps:
            nb = len(spec.seps)
            idxs = spec.sep_idx
            fold = spec.fold
            w = _folded(weights[idxs]) if fold else weights[idxs]
            h, _ = _sep_pointwise(spec, x, params[k:], ho, wo, keep=False)
            gamma = torch.cat([params[k + 4 * j + 2] for j in range(nb)])
            beta = torch.cat([params[k + 4 * j + 3] for j in range(nb)])
            if fold:
                wrep = w.repeat_interleave(c)
                gamma, beta = gamma * wrep, beta * wrep
            bn = _BN(spec.sep_bns)
            y, sa, sb = bn.forward(h, gamma, beta, inplace=spec.recompute)
            y3 = _rows(y.relu_()).view(-1, nb, c)
            y3 = y3.sum(1) if fold else (y3 * w.view(1, nb, 1)).sum(1)
            y = _image(y3, n, ho, wo)
            out = y if out is None else out.add_(y)
            saved += [None if spec.recompute else h, sa, sb]
            ctx.folds.append(fold)
            ctx.bns.append(bn)
            del h, y, y3
        if spec.pool is not None:
            p = F.max_pool2d(x, 3, s, 1)
            out = p * weights[spec.pool] if out is None else out.addcmul_(p, weights[spec.pool])
        if spec.identity is not None:
            out = x * weights[spec.identity] if out is None else out.addcmul_(x, weights[spec.identity])
        if out is None:
            out = x.new_zeros(n, c, ho, wo).contiguous(memory_format=CL)
        ctx.spec, ctx.recompute = spec, spec.recompute
        ctx.save_for_backward(x, weights, *params, *saved)
        ctx.n_params = len(params)
        return out

    @staticmethod
    def backward(ctx, go: torch.Tensor):
        spec: MixedSpec = ctx.spec
        x, weights, *rest = ctx.saved_tensors
        params, saved = rest[:ctx.n_params], rest[ctx.n_params:]
        need = ctx.needs_input_grad
        need_x, need_w, need_p = need[1], need[2], need[3:]
        go = go.contiguous(memory_format=CL)
        n, c, ho, wo = go.shape
        s = spec.stride
        gx = None
        if need_x:
            gx = (go * weights[spec.identity] if spec.identity is not None
                  else torch.zeros_like(x, memory_format=CL))
        gw = torch.zeros_like(weights) if need_w else None
        gp: list[torch.Tensor | None] = [None] * len(params)
        if spec.identity is not None and need_w:
            gw[spec.identity] = _dot(go, x)
        if spec.pool is not None:
            wp = weights[spec.pool]
            if need_x:
                p, ind = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [s, s], [1, 1])
                gx.addcmul_(torch.ops.aten.max_pool2d_with_indices_backward(
                    go, x, [3, 3], [s, s], [1, 1], [1, 1], False, ind), wp)
            elif need_w:
                p = F.max_pool2d(x, 3, s, 1)
            if need_w:
                gw[spec.pool] = _dot(go, p)
        go_rows = _rows(go)
        k = 0  # parameter offset
        for b_i, (idx, (stride, padding, dilation)) in enumerate(zip(spec.conv_idx, spec.conv_geom)):
            wc, gamma, beta = params[k:k + 3]
            h, sa, sb = saved[3 * b_i:3 * b_i + 3]
            fold, bn = ctx.folds[b_i], ctx.bns[b_i]
            w = _folded(weights[idx]) if fold else weights[idx]
            g_w, g_gamma, g_beta = need_p[k:k + 3]
            gam, bet = (gamma * w, beta * w) if fold else (gamma, beta)
            if need_x or g_w or g_gamma or g_beta or need_w:
                scale, shift = bn.scale_shift(sa, sb, gam, bet)
                y = torch.addcmul(shift, _rows(h), scale)  # BN output (rows), recomputed
                if not fold and need_w:
                    gw[idx] = torch.dot(y.clamp_min(0).reshape(-1), go_rows.reshape(-1))
                g = _relu_grad(go_rows if fold else go_rows * w, y)
                del y
                want_affine = g_gamma or g_beta or (fold and need_w)
                gh, gg, gb = bn.backward(_image(g, n, ho, wo), h, gam, sa, sb,
                                         [need_x or g_w, want_affine, want_affine])
                del g, h
                if fold and need_w:
                    gw[idx] = (gg * gamma).sum() + (gb * beta).sum()
                if g_gamma:
                    gp[k + 1] = gg * w if fold else gg
                if g_beta:
                    gp[k + 2] = gb * w if fold else gb
                if need_x or g_w:
                    gxc, gwc, _ = torch.ops.aten.convolution_backward(
                        gh.contiguous(memory_format=CL), x, wc, None, stride, padding, dilation,
                        False, [0, 0], 1, [need_x, g_w, False])
                    if need_x:
                        gx.add_(gxc)
                    gp[k] = gwc
            k += 3
        if spec.seps:
            nb = len(spec.seps)
            b_i = len(spec.convs)
            h, sa, sb = saved[3 * b_i:3 * b_i + 3]
            fold, bn = ctx.folds[b_i], ctx.bns[b_i]
            idxs = spec.sep_idx
            w = _folded(weights[idxs]) if fold else weights[idxs]
            gamma = torch.cat([params[k + 4 * j + 2] for j in range(nb)])
            beta = torch.cat([params[k + 4 * j + 3] for j in range(nb)])
            wrep = w.repeat_interleave(c)
            gam, bet = (gamma * wrep, beta * wrep) if fold else (gamma, beta)
            need_dw = [need_p[k + 4 * j] for j in range(nb)]
            need_pw = [need_p[k + 4 * j + 1] for j in range(nb)]
            need_aff = any(need_p[k + 4 * j + 2] or need_p[k + 4 * j + 3] for j in range(nb))
            need_gh = need_x or any(need_dw) or any(need_pw)
            if need_gh or need_aff or need_w:
                ds = None
                if ctx.recompute:  # the pointwise outputs were not stored: recompute them
                    h, ds = _sep_pointwise(spec, x, params[k:], ho, wo, keep=need_gh and any(need_pw))
                scale, shift = bn.scale_shift(sa, sb, gam, bet)
                y = torch.addcmul(shift, _rows(h), scale).view(-1, nb, c)
                go3 = go_rows.unsqueeze(1)
                if not fold and need_w:
                    gw[idxs] = torch.einsum("pkc,pc->k", y.clamp_min(0), go_rows)
                g = _relu_grad(go3.expand(-1, nb, c) if fold else go3 * w.view(1, nb, 1), y)
                del y
                want_affine = need_aff or (fold and need_w)
                gh, gg, gb = bn.backward(_image(g.view(-1, nb * c), n, ho, wo), h, gam, sa, sb,
                                         [need_gh, want_affine, want_affine])
                del g, h
                if fold and need_w:
                    gw[idxs] = (gg * gamma + gb * beta).view(nb, c).sum(1)
                if need_aff:
                    if fold:
                        gg, gb = gg * wrep, gb * wrep
                    for j in range(nb):
                        if need_p[k + 4 * j + 2]:
                            gp[k + 4 * j + 2] = gg[j * c:(j + 1) * c]
                        if need_p[k + 4 * j + 3]:
                            gp[k + 4 * j + 3] = gb[j * c:(j + 1) * c]
                if need_gh:
                    gh_rows = _rows(gh.contiguous(memory_format=CL)).view(-1, nb, c)
                    for j, dil in enumerate(spec.sep_dil):
                        dw, pw = params[k + 4 * j], params[k + 4 * j + 1]
                        ghj = gh_rows[:, j]
                        if need_pw[j]:
                            d = ds[j] if ds is not None else dw_forward(x, dw, s, dil)
                            gp[k + 4 * j + 1] = torch.mm(ghj.t(), _rows(d)).view_as(pw)
                        if need_x or need_dw[j]:
                            gd = _image(torch.mm(ghj, pw.view(c, c)), n, ho, wo)
                            gp[k + 4 * j] = dw_backward(gd, x, dw, s, dil, gx, need_dw[j])
        return (None, gx, gw, *gp)


def pointwise_bn_relu(m: ConvBNReLU, inputs: list[torch.Tensor]) -> torch.Tensor:
    """ReLU(BN(conv1x1(cat(inputs)))) for a 1x1 `ConvBNReLU` (a cell's input preprocessing and
    output projection), storing only the inputs: the concatenation and the conv output are
    recomputed in backward (one 1x1 conv), instead of keeping both (autograd keeps the
    concatenation for the conv and the conv output for BatchNorm)."""
    _refuse_autocast(inputs[0], "pointwise_bn_relu")
    return _PointwiseBNReLU.apply(m[1], len(inputs), *inputs, m[0].weight, m[1].weight, m[1].bias)


def pointwise_fusable(m: nn.Module) -> bool:
    return (fusable(m) == "conv" and m[0].kernel_size == (1, 1) and m[0].stride == (1, 1)
            and m[0].padding == (0, 0) and type(m[1]) is nn.BatchNorm2d and m[1].affine)


def _cat_rows(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)
    return _rows(x.contiguous(memory_format=CL))


class _PointwiseBNReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bn_mod: nn.Module, n_in: int, *tensors: torch.Tensor):
        inputs, (wc, gamma, beta) = tensors[:n_in], tensors[n_in:]
        n, _, hgt, wid = inputs[0].shape
        c_out = wc.shape[0]
        h = _image(torch.mm(_cat_rows(inputs), wc.view(c_out, -1).t()), n, hgt, wid)
        bn = _BN([bn_mod])
        y, sa, sb = bn.forward(h, gamma, beta, inplace=True)
        ctx.bn, ctx.n_in = bn, n_in
        ctx.save_for_backward(*inputs, wc, gamma, beta, sa, sb)
        return y.relu_()

    @staticmethod
    def backward(ctx, go: torch.Tensor):
        *inputs, wc, gamma, beta, sa, sb = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        need_in, (need_w, need_g, need_b) = need[:ctx.n_in], need[ctx.n_in:]
        n, c_out, hgt, wid = go.shape
        bn = ctx.bn
        x = _cat_rows(tuple(inputs))
        w2 = wc.view(c_out, -1)
        h = torch.mm(x, w2.t())  # the conv output, recomputed (rows)
        scale, shift = bn.scale_shift(sa, sb, gamma, beta)
        g = _relu_grad(_rows(go.contiguous(memory_format=CL)), torch.addcmul(shift, h, scale))
        gh, gg, gb = bn.backward(_image(g, n, hgt, wid), _image(h, n, hgt, wid), gamma, sa, sb,
                                 [any(need_in) or need_w, need_g, need_b])
        del g, h
        grads: list[torch.Tensor | None] = [None] * (ctx.n_in + 3)
        if any(need_in) or need_w:
            gh = _rows(gh.contiguous(memory_format=CL))
            if need_w:
                grads[ctx.n_in] = torch.mm(gh.t(), x).view_as(wc)
            if any(need_in):
                gx = _image(torch.mm(gh, w2), n, hgt, wid)
                k = 0
                for i, t in enumerate(inputs):
                    if need_in[i]:
                        grads[i] = gx[:, k:k + t.shape[1]]
                    k += t.shape[1]
        grads[ctx.n_in + 1] = gg if need_g else None
        grads[ctx.n_in + 2] = gb if need_b else None
        return (None, None, *grads)


def factorized_reduce(m: FactorizedReduce, x: torch.Tensor, weight: torch.Tensor | None = None,
                      fold: bool = False) -> torch.Tensor:
    """[weight ·] m(x) for a FactorizedReduce (two 1x1 stride-2 convs, one offset by a pixel, BN,
    ReLU), storing only x: the strided inputs, conv outputs and BN input are recomputed in
    backward (autograd would keep a padded copy of x, the concatenation and the ReLU output).
    `fold`: `weight` is >= 0 by construction and is folded into BatchNorm (`MixedSpec.fold`)."""
    _refuse_autocast(x, "factorized_reduce")
    args = (x, m.conv_a.weight, m.conv_b.weight, m.bn.weight, m.bn.bias)
    if weight is None:
        return _FactorizedReduce.apply(m.bn, False, *args)
    return _FactorizedReduce.apply(m.bn, fold, *args, weight)


def factorized_fusable(m: nn.Module) -> bool:
    return (type(m) is FactorizedReduce and type(m.bn) is nn.BatchNorm2d and m.bn.affine
            and m.conv_a.bias is None and m.conv_b.bias is None)


def _fr_conv(x: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """cat(conv_a(x[::2, ::2]), conv_b(x shifted by one pixel)[::2, ::2]) as a channels-last
    image, and the strided inputs as rows (for the weight gradients)."""
    n, _, hgt, wid = x.shape
    ho, wo = (hgt + 1) // 2, (wid + 1) // 2
    hb, wb_ = hgt // 2, wid // 2  # x[1::2, 1::2]; the rest of conv_b's output sees the zero pad
    ca, cb = wa.shape[0], wb.shape[0]
    xa = _rows(x[:, :, ::2, ::2].contiguous(memory_format=CL))
    xb = _rows(x[:, :, 1::2, 1::2].contiguous(memory_format=CL))
    h = x.new_empty(n, ho, wo, ca + cb)
    torch.mm(xa, wa.view(ca, -1).t(), out=h.view(-1, ca + cb)[:, :ca])
    if (hb, wb_) == (ho, wo):
        torch.mm(xb, wb.view(cb, -1).t(), out=h.view(-1, ca + cb)[:, ca:])
    else:
        h[..., ca:].zero_()
        h[:, :hb, :wb_, ca:] = torch.mm(xb, wb.view(cb, -1).t()).view(n, hb, wb_, cb)
    return h.permute(0, 3, 1, 2), (xa, xb, hb, wb_)


class _FactorizedReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bn_mod: nn.Module, fold: bool, x: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor,
                gamma: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor | None = None):
        x = x.contiguous(memory_format=CL)
        h, _ = _fr_conv(x, wa, wb)
        fold = weight is not None and fold
        wf = _folded(weight) if fold else weight
        bn = _BN([bn_mod])
        y, sa, sb = bn.forward(h, gamma * wf if fold else gamma, beta * wf if fold else beta, inplace=True)
        y.relu_()
        if weight is not None and not fold:
            y = y * weight
        ctx.bn, ctx.fold, ctx.weighted = bn, fold, weight is not None
        ctx.save_for_backward(x, wa, wb, gamma, beta, sa, sb, weight)
        return y

    @staticmethod
    def backward(ctx, go: torch.Tensor):
        x, wa, wb, gamma, beta, sa, sb, weight = ctx.saved_tensors
        _, _, need_x, need_wa, need_wb, need_g, need_b, *rest = ctx.needs_input_grad
        need_w = bool(rest and rest[0])
        bn, fold = ctx.bn, ctx.fold
        wf = _folded(weight) if fold else weight  # the weight as forward folded it
        go = go.contiguous(memory_format=CL)
        n, c, ho, wo = go.shape
        gam, bet = (gamma * wf, beta * wf) if fold else (gamma, beta)
        h, (xa, xb, hb, wb_) = _fr_conv(x, wa, wb)
        h_rows = _rows(h)
        scale, shift = bn.scale_shift(sa, sb, gam, bet)
        y = torch.addcmul(shift, h_rows, scale)
        go_rows = _rows(go)
        gw = None
        if ctx.weighted and not fold:
            if need_w:
                gw = torch.dot(y.clamp_min(0).reshape(-1), go_rows.reshape(-1)).reshape(weight.shape)
            go_rows = go_rows * weight
        g = _relu_grad(go_rows, y)
        del y
        want_affine = need_g or need_b or (fold and need_w)
        need_h = need_x or need_wa or need_wb
        gh, gg, gb = bn.backward(_image(g, n, ho, wo), h, gam, sa, sb, [need_h, want_affine, want_affine])
        del g, h, h_rows
        if fold and need_w:
            gw = ((gg * gamma).sum() + (gb * beta).sum()).reshape(weight.shape)
        if fold:
            gg = gg * wf if need_g else None
            gb = gb * wf if need_b else None
        ggam = gg if need_g else None
        gbet = gb if need_b else None
        gx = gwa = gwb = None
        if need_h:
            ca = wa.shape[0]
            gh = gh.contiguous(memory_format=CL).permute(0, 2, 3, 1)  # [N, Ho, Wo, C] (contiguous)
            gha = gh.reshape(-1, c)[:, :ca]
            ghb = (gh.reshape(-1, c)[:, ca:] if (hb, wb_) == (ho, wo)
                   else gh[:, :hb, :wb_, ca:].reshape(-1, c - ca))
            if need_wa:
                gwa = torch.mm(gha.t(), xa).view_as(wa)
            if need_wb:
                gwb = torch.mm(ghb.t(), xb).view_as(wb)
            if need_x:
                nb_, c_in, hgt, wid = x.shape
                gx = torch.zeros_like(x, memory_format=CL)
                gx[:, :, ::2, ::2] = _image(torch.mm(gha, wa.view(ca, -1)), nb_, ho, wo)
                gx[:, :, 1::2, 1::2] = _image(torch.mm(ghb, wb.view(c - ca, -1)), nb_, hb, wb_)
        return (None, None, gx, gwa, gwb, ggam, gbet, gw)[:len(ctx.needs_input_grad)]
