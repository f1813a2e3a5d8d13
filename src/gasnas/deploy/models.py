"""What `bench`, `export` and `predict` run: a derived net (from a genotype or a trained
checkpoint) and the torchvision real-time peers it is compared against.

The peers are built with `weights=None, weights_backbone=None` (nothing is downloaded) and the
same number of classes as the derived net, wrapped so that `forward` returns the `out` tensor
like every gasnas network does.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gasnas.errors import GasnasError

# ImageNet normalisation; used when a checkpoint's meta does not carry its own mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PEERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")


def parse_size(text: str | list[int] | tuple[int, int], arg: str = "--input") -> tuple[int, int]:
    """'1024x2048' (or [1024, 2048]) → (1024, 2048); anything else is a GasnasError naming `arg`."""
    if isinstance(text, (list, tuple)):
        if len(text) == 2 and all(isinstance(v, int) and v > 0 for v in text):
            return int(text[0]), int(text[1])
        raise GasnasError(f"{arg} {list(text)!r}: expected [H, W] with positive integers")
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise GasnasError(f"{arg} {text!r}: expected HxW with positive integers, e.g. 1024x2048")
    return int(m.group(1)), int(m.group(2))


def load_network(genotype: str | Path | None = None, checkpoint: str | Path | None = None,
                 ) -> tuple[nn.Module, dict[str, Any], str]:
    """(model in eval mode, checkpoint meta, a label) from exactly one of a genotype JSON (random
    weights: fine for speed) or a trained checkpoint written with `checkpoint_payload`."""
    from gasnas.space.derived import DerivedNet, load_derived_checkpoint
    from gasnas.space.genotype import Genotype

    if (genotype is None) == (checkpoint is None):
        raise GasnasError("give exactly one of --genotype or --checkpoint")
    if checkpoint is not None:
        model, meta = load_derived_checkpoint(checkpoint)
        return model.eval(), meta, str(checkpoint)
    g = Genotype.load(genotype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights, but the same ones every time
        return DerivedNet(g).eval(), {}, str(genotype)


class OutTensor(nn.Module):
    """Make a torchvision segmentation model return `out` instead of a dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_peer(name: str, num_classes: int, device: str | torch.device | None = None) -> nn.Module:
    """One of `PEERS`, untrained, `num_classes` outputs, forward → logits tensor. `device="meta"`
    builds it without allocating weights (for FLOP counting)."""
    from torchvision.models import segmentation

    if name not in PEERS:
        raise GasnasError(f"peer '{name}': expected one of {', '.join(PEERS)}")
    factory: Callable[..., nn.Module] = getattr(segmentation, name)
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if name != "lraspp_mobilenet_v3_large":
        kwargs["aux_loss"] = False
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(0)
        return OutTensor(factory(**kwargs)).eval()


def complexity(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(params, FLOPs of one batch-1 forward) via space.complexity; FLOPs are counted on a
    meta-device copy, so no real compute runs even at 1024x2048."""
    from gasnas.space.complexity import count_flops, count_params

    params = count_params(model)
    try:
        flops = count_flops(copy.deepcopy(model).to("meta"), input_size)
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count for real
        flops = count_flops(model, input_size)
    return params, flops
