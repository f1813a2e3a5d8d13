"""The skeleton shared by the supernet and the derived network: stem → cells → context head.

Default (reconstructed, see docs/method.md): three stride-2 3x3 convs to 1/8; stages of cells
at 1/8, 1/16, 1/32, each later stage opened by a reduction cell; a head with a global-context
(average-pool) branch at 1/32, fused upsample-and-add with the 1/16 and 1/8 features, a 3x3 conv
and a classifier at 1/8, bilinear upsampling to the input size.

Optional (`space.detail_channels`, gasnas addition, empty by default): decoder steps that fuse
the stem's 1/4 feature (first entry) and then its 1/2 feature (second entry) into the head
(DeepLabV3+-style) and classify at the finest one, so thin objects survive on small inputs where
1/8 is only a few dozen pixels across. A stem of fewer convs (gasnas addition) starts the cells
at 1/2^len(stem_channels); the detail steps then fuse the stem features finer than that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gasnas.config import SpaceConfig
from gasnas.space.ops import ConvBNReLU, SepConv


@dataclass(frozen=True)
class CellPlan:
    """Where a cell sits: its widths, whether it or its predecessor reduces, its output scale."""

    index: int
    stage: int
    reduction: bool
    reduction_prev: bool
    c_prev_prev: int
    c_prev: int
    c: int
    scale: int  # output resolution = input / scale


def plan_cells(space: SpaceConfig) -> list[CellPlan]:
    """The cell sequence of the skeleton; both networks and the latency table iterate this."""
    plans: list[CellPlan] = []
    stem_out = space.stem_channels[-1]
    c_pp, c_p, reduction_prev, scale = stem_out, stem_out, False, 2 ** len(space.stem_channels)
    k = 0
    for stage, (c, n_normal) in enumerate(zip(space.stage_channels, space.cells_per_stage)):
        kinds = ([True] if stage > 0 else []) + [False] * n_normal
        for reduction in kinds:
            if reduction:
                scale *= 2
            plans.append(CellPlan(k, stage, reduction, reduction_prev, c_pp, c_p, c, scale))
            c_pp, c_p, reduction_prev = c_p, c, reduction
            k += 1
    return plans


def net_stride(space: SpaceConfig) -> int:
    """How much the skeleton downsamples: the stem's convs and the reduction cells."""
    return plan_cells(space)[-1].scale


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_size(space: SpaceConfig, h: int, w: int) -> tuple[int, int]:
    """The size the cells see for an h x w input: rounded up to `net_stride` with
    `space.pad_to_stride`, else unchanged."""
    if not space.pad_to_stride:
        return h, w
    s = net_stride(space)
    return round_up(h, s), round_up(w, s)


def pad_to_multiple(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Edge-replicate x on the right and bottom up to a multiple of `stride`. Why: a stride-2
    3x3 conv (pad 1) on an even size never reads its right/bottom zero padding, on an odd size
    it does; a net trained on crops that are multiples of its stride then meets, at a size like
    180x240, edge effects it never saw, and its coarse features drift across the image in the
    upsampling (-2.5 mIoU on the demo's val split, -8 on one net; docs/results.md)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    if torch.jit.is_tracing() or pad_h or pad_w:  # a traced graph must pad at every size
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def resize_and_crop(x: torch.Tensor, size: torch.Size | tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """Bilinear to `size` (the padded input's), then the top-left `out` (the input's): the
    padding to the stride undone. A view: callers that need dense logits call .contiguous()."""
    return resize(x, size)[..., : out[0], : out[1]]


def stage_outputs(plans: list[CellPlan]) -> list[int]:
    """Index of the last cell of each stage (the features the head fuses)."""
    last: dict[int, int] = {}
    for p in plans:
        last[p.stage] = p.index
    return [last[s] for s in sorted(last)]


def detail_stem_indices(space: SpaceConfig) -> list[int]:
    """Which stem convs' outputs the detail steps fuse, in order (conv i outputs 1/2^(i+1)):
    coarse to fine from the one before the last (with three convs: 1/4, then 1/2)."""
    return [len(space.stem_channels) - 2 - i for i in range(len(space.detail_channels))]


class Stem(nn.Sequential):
    def __init__(self, widths: list[int]) -> None:
        c_in, layers = 3, []
        for w in widths:
            layers.append(ConvBNReLU(c_in, w, 3, stride=2))
            c_in = w
        super().__init__(*layers)


def resize(x: torch.Tensor, size: Any) -> torch.Tensor:
    """Bilinear resize (align_corners=False) whose backward runs in x's memory format. Why: the
    gradient that reaches a resize is often strided (a channel slice of a concatenation, or the
    loss's NCHW gradient), and CPU's bilinear backward is 2-4x slower on such a gradient than on
    a channels-last one; one copy of the gradient is cheaper."""
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if (y.requires_grad and not torch.jit.is_tracing()
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
        y.register_hook(lambda g: g.contiguous(memory_format=torch.channels_last))
    return y


class ContextHead(nn.Module):
    """Global-context branch at the coarsest stage, upsample-and-add down to 1/8, then one
    detail step per `detail_channels` entry (stem feature with `detail_in[i]` channels → 1x1 to
    `detail_channels[i]`, concatenated with the upsampled head feature, fused by a 3x3 conv at
    1/4 (separable with `detail_fuse="sep"`) or a separable 3x3 conv at 1/2), classifier."""

    def __init__(self, stage_channels: list[int], head_channels: int, num_classes: int,
                 aux_heads: bool, detail_in: list[int] | tuple[int, ...] = (),
                 detail_channels: list[int] | tuple[int, ...] = (), detail_fuse: str = "conv") -> None:
        super().__init__()
        self.detail = nn.ModuleList(ConvBNReLU(c, d, 1) for c, d in zip(detail_in, detail_channels))
        self.fuse = nn.ModuleList(
            ConvBNReLU(head_channels + d, head_channels, 3) if i == 0 and detail_fuse == "conv"
            else SepConv(head_channels + d, head_channels)
            for i, d in enumerate(detail_channels))
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(stage_channels[-1], head_channels, 1))
        self.lateral = nn.ModuleList(ConvBNReLU(c, head_channels, 1) for c in stage_channels)
        self.refine = nn.ModuleList(ConvBNReLU(head_channels, head_channels, 3) for _ in stage_channels)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.aux = (nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in stage_channels[1:])
                    if aux_heads else None)

    def forward(self, feats: list[torch.Tensor], details: list[torch.Tensor] | tuple[torch.Tensor, ...] = ()
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        top = feats[-1]
        x = self.lateral[-1](top) + self.context(top)
        x = self.refine[-1](x)
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            x = lat + resize(x, lat.shape[-2:])
            x = self.refine[i](x)
        if len(details) != len(self.fuse):
            raise ValueError(f"this head fuses {len(self.fuse)} stem features, got {len(details)}")
        for project, fuse, feature in zip(self.detail, self.fuse, details):
            d = project(feature)
            x = resize(x, d.shape[-2:])
            x = fuse(torch.cat([x, d], dim=1))
        aux = [head(f) for head, f in zip(self.aux, feats[1:])] if self.aux is not None else []
        return self.classifier(x), aux


class SegmentationNet(nn.Module):
    """Stem + cells + head. Subclasses decide what a cell is (searchable or derived)."""

    def __init__(self, space: SpaceConfig, num_classes: int,
                 make_cell: Callable[[CellPlan], nn.Module], channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.space, self.num_classes = space, num_classes
        self.plans = plan_cells(space)
        self.set_input_padding(space.pad_to_stride)
        self.stem = Stem(space.stem_channels)
        self.cells = nn.ModuleList(make_cell(p) for p in self.plans)
        self.taps = stage_outputs(self.plans)
        self.detail_taps = detail_stem_indices(space)
        self.head = ContextHead(space.stage_channels, space.head_channels, num_classes, space.aux_heads,
                                [space.stem_channels[i] for i in self.detail_taps], space.detail_channels,
                                space.detail_fuse)

    def cell_weights(self) -> list[torch.Tensor | None]:
        return [None] * len(self.cells)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stage outputs (fine to coarse) and the stem features the detail steps fuse."""
        weights = self.cell_weights()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        stem_out = []
        for layer in self.stem:
            x = layer(x)
            stem_out.append(x)
        s0 = s1 = x
        feats = []
        for k, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, weights[k])
            if k in self.taps:
                feats.append(s1)
        return feats, [stem_out[i] for i in self.detail_taps]

    def set_input_padding(self, enabled: bool) -> None:
        """Turn the padding to the stride on or off: it has no weights, so a checkpoint can be
        evaluated either way (`gasnas eval --set space.pad_to_stride=false`)."""
        self.pad_stride = net_stride(self.space) if enabled else 1

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        h, w = x.shape[-2:]
        if self.pad_stride > 1:
            x = pad_to_multiple(x, self.pad_stride)
        feats, details = self.forward_features(x)
        logits, aux = self.head(feats, details)
        size = x.shape[-2:]
        logits = resize_and_crop(logits, size, (h, w)).contiguous()
        if not return_aux:
            return logits
        return logits, [resize_and_crop(a, size, (h, w)) for a in aux]
