"""The networks the engine trains and evaluates and deploy benchmarks, exports and predicts with:
a derived net (from a genotype or a trained checkpoint) and the torchvision real-time peers it
is compared against. Both engine/ and deploy/ import them from here, never from each other.

The peers are built with `weights=None, weights_backbone=None` (nothing is downloaded) and the
same number of classes as the derived net, wrapped so that `forward` returns the `out` tensor
like every gasnas network does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gasnas.data.transforms import MEAN as IMAGENET_MEAN  # noqa: F401 - used by export/predict
from gasnas.data.transforms import STD as IMAGENET_STD  # noqa: F401
from gasnas.errors import GasnasError
from gasnas.fileio import torch_load
from gasnas.space.complexity import count_flops, count_params
from gasnas.space.derived import DerivedNet, load_derived_checkpoint
from gasnas.space.genotype import Genotype

# IMAGENET_MEAN/STD (the data package's normalisation) apply when a checkpoint's meta carries
# no mean/std of its own.

PEERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")


def load_network(genotype: str | Path | None = None, checkpoint: str | Path | None = None,
                 ) -> tuple[nn.Module, dict[str, Any], str]:
    """(model in eval mode, checkpoint meta, a label) from exactly one of a genotype JSON (random
    weights: fine for speed) or a trained checkpoint written with `checkpoint_payload`."""

    if (genotype is None) == (checkpoint is None):
        raise GasnasError("give exactly one of --genotype or --checkpoint")
    if checkpoint is not None:
        model, meta = load_trained(checkpoint)
        return model.eval(), meta, str(checkpoint)
    g = Genotype.load(genotype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights, but the same ones every time
        return DerivedNet(g).eval(), {}, str(genotype)


def load_trained(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model, meta) from a checkpoint of `gasnas train`: a derived net, or a torchvision peer
    trained with `--peer` (rebuilt by name, untrained, then its weights loaded)."""

    ckpt = torch_load(path)
    if not (isinstance(ckpt, dict) and "peer" in ckpt):
        return load_derived_checkpoint(path)
    meta = dict(ckpt.get("meta") or {})
    names = meta.get("class_names") or []
    model = build_peer(str(ckpt["peer"]), len(names) or int(meta.get("num_classes", 0)) or 1)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise GasnasError(f"{path}: weights do not match peer {ckpt['peer']} ({str(exc).splitlines()[0]})") from None
    return model, meta


class OutTensor(nn.Module):
    """Make a torchvision segmentation model return `out` instead of a dict."""

    def __init__(self, model: nn.Module, peer: str = "", num_classes: int = 0) -> None:
        super().__init__()
        self.model, self.peer, self.num_classes = model, peer, num_classes

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
        return OutTensor(factory(**kwargs), name, num_classes).eval()


def complexity(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(params, FLOPs of one batch-1 forward) via space.complexity; FLOPs are counted on a
    meta-device copy, so no real compute runs even at 1024x2048."""

    params = count_params(model)
    try:
        flops = count_flops(copy.deepcopy(model).to("meta"), input_size)
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count for real
        flops = count_flops(model, input_size)
    return params, flops
