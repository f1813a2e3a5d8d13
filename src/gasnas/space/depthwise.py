"""3x3 depthwise convolutions with a fast CPU backward, for the supernet and the derived net.

oneDNN's backward of dilated depthwise convs (and of strided dilated ones) is 10-100x slower
than their forward on CPU, and a training step of a derived net spends more time there than
in any other op. The same sums, computed another way:

* A stride-2 conv with an even dilation d only reads even pixels: it is x[::2, ::2] convolved
  with dilation d/2, stride 1.
* The input gradient of a stride-1 'same' conv is a forward conv of the output gradient with
  the flipped kernel.
* The weight gradient of a dilated stride-1 conv is, per tap, a sum of products of the output
  gradient and the shifted input (`_dw_weight_grad_taps`).
* A conv whose dilation is at least the feature map's height and width only sees the centre
  tap: a per-channel scale.

`space/fused.py` calls `dw_forward` / `dw_backward` inside the supernet's mixed op;
`depthwise_conv3x3` wraps them in an autograd Function for `ops.SepConv` (the derived net and
the head).

Under autocast (search.amp / train.amp) `depthwise_conv3x3` bypasses the Function and runs the
plain `F.conv2d`, which autocast casts like any other conv: the backward here mixes the saved
input's and the gradient's dtypes, so it is fp32 code (space/fused.py says the same for the
mixed op). `ops.SepConv` takes the plain conv there in the first place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CL = torch.channels_last


def autocast_active(x: torch.Tensor) -> bool:
    """Whether autocast is on for x's device type (device types without autocast, e.g. meta,
    never are); the fp32 Functions here and in space/fused.py step aside when it is."""
    kind = x.device.type
    return torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)


def _dw_plan(x: torch.Tensor, stride: int, dilation: int) -> tuple[torch.Tensor, bool, int, int, str]:
    """How to run a 3x3 depthwise conv (padding = dilation): (input, subsampled, stride,
    dilation, mode) with mode 'centre' (only the centre tap sees the image) or 'conv'."""
    sub = stride == 2 and dilation % 2 == 0
    if sub:  # even dilation, stride 2: only even pixels are read
        x = x[:, :, ::2, ::2].contiguous(memory_format=CL)
        stride, dilation = 1, dilation // 2
    mode = "centre" if stride == 1 and dilation >= x.shape[2] and dilation >= x.shape[3] else "conv"
    return x, sub, stride, dilation, mode


def dw_forward(x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    xs, _, s, d, mode = _dw_plan(x, stride, dilation)
    if mode == "centre":
        return xs * w[:, 0, 1, 1].view(1, -1, 1, 1)
    return _dw_conv(xs, w, s, d)


def _dw_conv(x: torch.Tensor, w: torch.Tensor, stride: int, d: int) -> torch.Tensor:
    """3x3 depthwise conv, padding = dilation d. oneDNN's kernel is slow with large padding
    (d = 8: 5-10x); zero-padding explicitly and convolving without padding is the same sum."""
    if d > 4:
        return F.conv2d(F.pad(x, (d, d, d, d)), w, None, stride, 0, d, x.shape[1]).contiguous(memory_format=CL)
    return F.conv2d(x, w, None, stride, d, d, x.shape[1]).contiguous(memory_format=CL)


def dw_backward(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int,
                gx: torch.Tensor | None, need_w: bool) -> torch.Tensor | None:
    """Add the input gradient of a depthwise conv into `gx` (if given); return its weight
    gradient (if `need_w`)."""
    gxs, sub, gw = _dw_grads(gy, x, w, stride, dilation, gx is not None, need_w)
    if gx is not None:
        (gx[:, :, ::2, ::2] if sub else gx).add_(gxs)
    return gw


def _dw_grads(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int,
              need_x: bool, need_w: bool) -> tuple[torch.Tensor | None, bool, torch.Tensor | None]:
    """(input gradient, subsampled, weight gradient) of a depthwise conv; when subsampled, the
    input gradient covers only x[:, :, ::2, ::2] (the pixels the conv reads)."""
    if need_w:
        xs, sub, s, d, mode = _dw_plan(x, stride, dilation)
    else:
        xs, (sub, s, d, mode) = x, _dw_plan_no_copy(x, stride, dilation)
    c = w.shape[0]
    gxs = gw = None
    if need_x:
        if mode == "centre":
            gxs = gy * w[:, 0, 1, 1].view(1, -1, 1, 1)
        elif s == 1:  # the transposed conv of a stride-1 'same' conv: the flipped kernel
            gxs = _dw_conv(gy, w.flip(2, 3), 1, d)
        else:  # stride 2, odd dilation (x itself, not subsampled)
            gxs = torch.ops.aten.convolution_backward(
                gy, x, w, None, [s, s], [d, d], [d, d], False, [0, 0], c, [True, False, False])[0]
    if need_w:
        if mode == "centre":
            gw = torch.zeros_like(w)
            gw[:, 0, 1, 1] = (gy * xs).sum(dim=(0, 2, 3))
        elif s == 1 and d > 1:
            gw = _dw_weight_grad_taps(gy, xs, d)
        else:
            gw = torch.ops.aten.convolution_backward(
                gy, xs, w, None, [s, s], [d, d], [d, d], False, [0, 0], c, [False, True, False])[1]
    return gxs, sub, gw


def _dw_weight_grad_taps(gy: torch.Tensor, x: torch.Tensor, d: int) -> torch.Tensor:
    """Weight gradient of a stride-1 3x3 depthwise conv with dilation d (padding d): per tap,
    Σ gy · x shifted, over the pixels where the shifted x lies inside the map. oneDNN's dilated
    depthwise weight gradient is 1.2-9x slower (most when the dilation nears the map size)."""
    n, c, hgt, wid = gy.shape
    g4, x4 = gy.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1)  # channels last: reduce to C
    gw = gy.new_zeros(9, c)
    for i in range(3):
        di = (i - 1) * d
        h0, h1 = max(0, -di), min(hgt, hgt - di)
        for j in range(3):
            dj = (j - 1) * d
            w0, w1 = max(0, -dj), min(wid, wid - dj)
            if h0 < h1 and w0 < w1:
                torch.sum(g4[:, h0:h1, w0:w1] * x4[:, h0 + di:h1 + di, w0 + dj:w1 + dj], dim=(0, 1, 2),
                          out=gw[3 * i + j])
    return gw.t().reshape(c, 1, 3, 3)


def _dw_plan_no_copy(x: torch.Tensor, stride: int, dilation: int) -> tuple[bool, int, int, str]:
    """`_dw_plan` without building the subsampled input (for input gradients only)."""
    sub = stride == 2 and dilation % 2 == 0
    h, w = x.shape[2], x.shape[3]
    if sub:
        stride, dilation, h, w = 1, dilation // 2, (h + 1) // 2, (w + 1) // 2
    mode = "centre" if stride == 1 and dilation >= h and dilation >= w else "conv"
    return sub, stride, dilation, mode


class _DepthwiseConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.geometry = (stride, dilation)
        return dw_forward(x, w, stride, dilation)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        stride, dilation = ctx.geometry
        need_x, need_w = ctx.needs_input_grad[:2]
        gxs, sub, gw = _dw_grads(gy.contiguous(memory_format=CL), x, w, stride, dilation, need_x, need_w)
        gx = gxs
        if need_x and sub:  # the conv read only the even pixels: the others get no gradient
            gx = torch.zeros_like(x, memory_format=CL)
            gx[:, :, ::2, ::2] = gxs
        return gx, gw, None, None


def depthwise_conv3x3(x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    """`F.conv2d(x, w, None, stride, dilation, dilation, groups=C)` for a [C, 1, 3, 3] kernel,
    with the backward above. Output in channels-last layout. Under autocast: the plain conv."""
    if autocast_active(x):
        return F.conv2d(x, w, None, stride, dilation, dilation, x.shape[1]).contiguous(memory_format=CL)
    return _DepthwiseConv3x3.apply(x, w, stride, dilation)
