"""What the latency table holds: one entry per (op, shape), plus the fixed parts of the net.

`space_layout(space, num_classes, input_size)` walks `plan_cells(space)` × `edge_index(nodes)`
and returns every shape the network sees, so the table builder and the estimator agree on keys.
Keys carry the full shape (FasterSeg's idea), so one table serves many spaces:

    conv_3x3_H45_W60_Cin64_Cout64_s1_d1          an edge op, input 45x60, 64 -> 64 channels
    stem_H360_W480_C16-32-64                     the three stride-2 stem convs
    stem_H180_W240_C32-48-64_P192x256            ... after the input's padding to the net's
                                                 stride (`space.pad_to_stride`)
    cell_s0H45_W60_C64_s1H23_W30_C128_C128_n2_r0 a cell skeleton: preprocess both inputs,
                                                 one add per kept edge beyond the first of each
                                                 node, concat, 1x1 projection
    head_F45x60-23x30-12x15_C64-128-256_Ch64_cls11_out360x480
                                                 context head + upsampling to the input size
                                                 (`_D90x120_C32-16` after `_Ch64` per detail
                                                 step: its input HxW, C in-out; `_up192x256`
                                                 at the end: upsampled to the padded size, then
                                                 cropped)

Each item can build the module it times and example inputs of the right shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gasnas.config import SpaceConfig
from gasnas.space.cell import CellBase, edge_index
from gasnas.space.network import (
    CellPlan,
    ContextHead,
    Stem,
    detail_stem_indices,
    net_stride,
    pad_to_multiple,
    padded_size,
    plan_cells,
    resize_and_crop,
    round_up,
    stage_outputs,
)
from gasnas.space.ops import OPS


def half(h: int, w: int) -> tuple[int, int]:
    """Resolution after a stride-2 op of this space (3x3 pad 1, or 1x1 pad 0): ceil(x / 2)."""
    return -(-h // 2), -(-w // 2)


@dataclass(frozen=True)
class OpItem:
    """One candidate op on one edge shape. `h, w` are the op's input resolution."""

    op: str
    h: int
    w: int
    c_in: int
    c_out: int
    stride: int

    @property
    def dilation(self) -> int:
        return OPS[self.op].dilation

    @property
    def key(self) -> str:
        return (f"{self.op}_H{self.h}_W{self.w}_Cin{self.c_in}_Cout{self.c_out}"
                f"_s{self.stride}_d{self.dilation}")

    def build(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        return OPS[self.op](self.c_in, self.c_out, self.stride), (torch.randn(1, self.c_in, self.h, self.w),)


class PaddedStem(nn.Module):
    """The input's padding to the net's stride, then the stem (as `SegmentationNet` runs them)."""

    def __init__(self, stem: Stem, stride: int) -> None:
        super().__init__()
        self.stem, self.stride = stem, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(pad_to_multiple(x, self.stride))


@dataclass(frozen=True)
class StemItem:
    """The stem on an h x w input, padded first to a multiple of `pad_stride` (1: no padding)."""

    h: int
    w: int
    widths: tuple[int, ...]
    pad_stride: int = 1

    @property
    def padded_size(self) -> tuple[int, int]:
        return round_up(self.h, self.pad_stride), round_up(self.w, self.pad_stride)

    @property
    def key(self) -> str:
        ph, pw = self.padded_size
        pad = f"_P{ph}x{pw}" if (ph, pw) != (self.h, self.w) else ""
        return f"stem_H{self.h}_W{self.w}_C{'-'.join(map(str, self.widths))}{pad}"

    def build(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        stem = Stem(list(self.widths))
        module = PaddedStem(stem, self.pad_stride) if self.padded_size != (self.h, self.w) else stem
        return module, (torch.randn(1, 3, self.h, self.w),)


class CellSkeleton(CellBase):
    """A cell without its edge ops: the same preprocessing and projection as the real cells
    (it *is* a CellBase), each node the sum of two tensors (the add a derived cell does for its
    two kept edges), the concat, the 1x1 projection. In a reduction cell the summed tensors are
    the inputs subsampled to the output resolution, so no constant can be folded away."""

    def node(self, j: int, states: list[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
        a, b = states[0], states[1]
        if self.reduction:
            a, b = a[:, :, ::2, ::2], b[:, :, ::2, ::2]
        return a + b


@dataclass(frozen=True)
class SkeletonItem:
    """The fixed part of one cell position: inputs s0 (c_pp, h0, w0) and s1 (c_p, h1, w1)."""

    h0: int
    w0: int
    c_pp: int
    h1: int
    w1: int
    c_p: int
    c: int
    nodes: int
    reduction: bool

    @property
    def key(self) -> str:
        return (f"cell_s0H{self.h0}_W{self.w0}_C{self.c_pp}_s1H{self.h1}_W{self.w1}_C{self.c_p}"
                f"_C{self.c}_n{self.nodes}_r{int(self.reduction)}")

    def build(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        reduction_prev = (self.h0, self.w0) != (self.h1, self.w1)
        module = CellSkeleton(self.c_pp, self.c_p, self.c, self.nodes, self.reduction, reduction_prev)
        return module, (torch.randn(1, self.c_pp, self.h0, self.w0), torch.randn(1, self.c_p, self.h1, self.w1))


class HeadWithUpsample(nn.Module):
    """The context head on the stage features, then bilinear upsampling to the (padded) input
    size and the crop to the input size, exactly as `SegmentationNet.forward` does it."""

    def __init__(self, head: ContextHead, out_size: tuple[int, int], up_size: tuple[int, int]) -> None:
        super().__init__()
        self.head, self.out_size, self.up_size = head, out_size, up_size

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        n = len(feats) - len(self.head.fuse)  # the last inputs are the stem features of the detail steps
        logits, _ = self.head(list(feats[:n]), list(feats[n:]))
        return resize_and_crop(logits, self.up_size, self.out_size).contiguous()


@dataclass(frozen=True)
class HeadItem:
    feats: tuple[tuple[int, int, int], ...]  # (C, H, W) of each stage output, fine to coarse
    head_channels: int
    num_classes: int
    out_h: int
    out_w: int
    details: tuple[tuple[int, int, int], ...] = ()  # (C, H, W) of the stem features fused, 1/4 first
    detail_channels: tuple[int, ...] = ()
    detail_fuse: str = "conv"
    up_h: int = 0  # the padded input size the logits are upsampled to before the crop (0: out)
    up_w: int = 0

    @property
    def up_size(self) -> tuple[int, int]:
        return (self.up_h or self.out_h, self.up_w or self.out_w)

    @property
    def key(self) -> str:
        res = "-".join(f"{h}x{w}" for _, h, w in self.feats)
        chans = "-".join(str(c) for c, _, _ in self.feats)
        detail = "".join(f"_D{h}x{w}_C{c}-{d}" for (c, h, w), d in zip(self.details, self.detail_channels))
        if self.details and self.detail_fuse != "conv":
            detail += f"_{self.detail_fuse}"
        up = f"_up{self.up_size[0]}x{self.up_size[1]}" if self.up_size != (self.out_h, self.out_w) else ""
        return (f"head_F{res}_C{chans}_Ch{self.head_channels}{detail}_cls{self.num_classes}"
                f"_out{self.out_h}x{self.out_w}{up}")

    def build(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        head = ContextHead([c for c, _, _ in self.feats], self.head_channels, self.num_classes, False,
                           [c for c, _, _ in self.details], self.detail_channels, self.detail_fuse)
        shapes = [*self.feats, *self.details]
        inputs = tuple(torch.randn(1, c, h, w) for c, h, w in shapes)
        return HeadWithUpsample(head, (self.out_h, self.out_w), self.up_size), inputs


Item = OpItem | StemItem | SkeletonItem | HeadItem


@dataclass(frozen=True)
class EdgeShape:
    src: int
    node: int
    h: int  # the op's input resolution
    w: int
    c: int
    stride: int

    def item(self, op: str) -> OpItem:
        return OpItem(op, self.h, self.w, self.c, self.c, self.stride)


@dataclass(frozen=True)
class CellLayout:
    plan: CellPlan
    skeleton: SkeletonItem
    edges: tuple[EdgeShape, ...]  # in α-row order (edge_index)


@dataclass(frozen=True)
class Layout:
    """Every shape one network of `space` sees at `input_size`."""

    space_ops: tuple[str, ...]
    stem: StemItem
    cells: tuple[CellLayout, ...]
    head: HeadItem

    def fixed_items(self) -> list[Item]:
        return [self.stem, *(c.skeleton for c in self.cells), self.head]

    def op_items(self) -> list[OpItem]:
        return [e.item(op) for c in self.cells for e in c.edges for op in self.space_ops
                if not OPS[op].free]

    def items(self) -> list[Item]:
        """Every entry the table needs for this space, each once, fixed parts first."""
        seen: dict[str, Item] = {}
        for it in [*self.fixed_items(), *self.op_items()]:
            seen.setdefault(it.key, it)
        return list(seen.values())


def space_layout(space: SpaceConfig, num_classes: int, input_size: tuple[int, int] | list[int]) -> Layout:
    """Walk the skeleton (stem → `plan_cells(space)` → head) and record every shape."""
    h, w = int(input_size[0]), int(input_size[1])
    ph, pw = padded_size(space, h, w)
    stem = StemItem(h, w, tuple(space.stem_channels), net_stride(space) if space.pad_to_stride else 1)
    fh, fw = ph, pw
    stem_out = []
    for c_stem in space.stem_channels:
        fh, fw = half(fh, fw)
        stem_out.append((c_stem, fh, fw))
    details = tuple(stem_out[i] for i in detail_stem_indices(space))
    plans = plan_cells(space)
    taps = set(stage_outputs(plans))
    s0 = s1 = (space.stem_channels[-1], fh, fw)
    cells, feats = [], []
    for plan in plans:
        (c_pp, h0, w0), (c_p, h1, w1) = s0, s1
        oh, ow = half(h1, w1) if plan.reduction else (h1, w1)
        skeleton = SkeletonItem(h0, w0, c_pp, h1, w1, c_p, plan.c, space.nodes, plan.reduction)
        edges = []
        for src, j in edge_index(space.nodes):
            if src < 2:
                edges.append(EdgeShape(src, j, h1, w1, plan.c, 2 if plan.reduction else 1))
            else:
                edges.append(EdgeShape(src, j, oh, ow, plan.c, 1))
        cells.append(CellLayout(plan, skeleton, tuple(edges)))
        s0, s1 = s1, (plan.c, oh, ow)
        if plan.index in taps:
            feats.append(s1)
    head = HeadItem(tuple(feats), space.head_channels, num_classes, h, w, details, tuple(space.detail_channels),
                    space.detail_fuse, ph, pw)
    return Layout(tuple(space.ops), stem, tuple(cells), head)
