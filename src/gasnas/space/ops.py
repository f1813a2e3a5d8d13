"""The one registry of candidate operations.

The supernet, the derived network and the latency table all build operations from `OPS`, so an
op added here is searchable, derivable and measurable at once. Each entry builds a module from
(C_in, C_out, stride); conv ops are conv-BN-ReLU, separable ones depthwise 3x3 (dilated) followed
by pointwise 1x1 (reconstructed choices, see docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gasnas.space.depthwise import depthwise_conv3x3


class ConvBNReLU(nn.Sequential):
    """k x k conv → BN → ReLU; the basic block of the stem, the head and the `conv_3x3` op."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding=dilation * (kernel // 2),
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SepConv(nn.Sequential):
    """Depthwise 3x3 (optionally dilated, strided) → pointwise 1x1 → BN → ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride, padding=dilation, dilation=dilation, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw, pointwise, bn, relu = self
        if _fast_depthwise(x, dw.weight):
            x = depthwise_conv3x3(x, dw.weight, dw.stride[0], dw.dilation[0])
        else:
            x = dw(x)
        return relu(bn(pointwise(x)))


def _fast_depthwise(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Training on CPU in channels-last: take depthwise.py's backward. Exports and traces, CUDA,
    NCHW inputs and autocast (fp32 code, see depthwise.py) keep the plain conv."""
    return ((x.requires_grad or weight.requires_grad) and torch.is_grad_enabled() and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling())


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing half the pixels: two offset 1x1 stride-2 convs."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # same size, offset by one pixel
        return torch.relu(self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1)))


class Zero(nn.Module):
    """The `none` op: contributes nothing (and costs nothing in the latency model)."""

    def __init__(self, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_out, self.stride = c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x.shape[2] + self.stride - 1) // self.stride
        w = (x.shape[3] + self.stride - 1) // self.stride
        return x.new_zeros(x.shape[0], self.c_out, h, w)


def skip_connect(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if stride == 2:
        return FactorizedReduce(c_in, c_out)
    return ConvBNReLU(c_in, c_out, kernel=1)


def max_pool_3x3(c_in: int, c_out: int, stride: int) -> nn.Module:
    pool = nn.MaxPool2d(3, stride=stride, padding=1)
    return pool if c_in == c_out else nn.Sequential(pool, ConvBNReLU(c_in, c_out, kernel=1))


@dataclass(frozen=True)
class OpSpec:
    """How to build an op, and the attributes that key its latency table entry."""

    name: str
    build: Callable[[int, int, int], nn.Module]
    dilation: int = 1
    free: bool = False  # `none`: no compute, no latency, never chosen by derivation

    def __call__(self, c_in: int, c_out: int, stride: int = 1) -> nn.Module:
        return self.build(c_in, c_out, stride)


def _sep(dilation: int) -> Callable[[int, int, int], nn.Module]:
    return lambda c_in, c_out, stride: SepConv(c_in, c_out, stride, dilation)


OPS: dict[str, OpSpec] = {}


def register_op(name: str, build: Callable[[int, int, int], nn.Module], dilation: int = 1,
                free: bool = False) -> OpSpec:
    """Add an op to the registry (one line per op; see the entries below)."""
    OPS[name] = OpSpec(name, build, dilation, free)
    return OPS[name]


register_op("none", lambda c_in, c_out, stride: Zero(c_out, stride), free=True)
register_op("skip_connect", skip_connect)
register_op("max_pool_3x3", max_pool_3x3)
register_op("conv_3x3", lambda c_in, c_out, stride: ConvBNReLU(c_in, c_out, 3, stride))
register_op("sep_conv_3x3", _sep(1))
register_op("dil_sep_conv_3x3_r2", _sep(2), dilation=2)
register_op("dil_sep_conv_3x3_r4", _sep(4), dilation=4)
register_op("dil_sep_conv_3x3_r8", _sep(8), dilation=8)


def build_op(name: str, c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    return OPS[name](c_in, c_out, stride)
