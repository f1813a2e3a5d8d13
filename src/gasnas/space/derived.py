"""The derived network: the supernet's skeleton with only the genotype's edges and ops."""

from __future__ import annotations

from typing import Any

from gasnas.errors import GasnasError
from gasnas.fileio import torch_load
from gasnas.space.cell import DerivedCell
from gasnas.space.genotype import Genotype
from gasnas.space.network import SegmentationNet


class DerivedNet(SegmentationNet):
    def __init__(self, genotype: Genotype, num_classes: int | None = None) -> None:
        space = genotype.space
        cells = genotype.cells
        super().__init__(space, num_classes or genotype.num_classes, lambda p: DerivedCell(
            cells[p.index].edges, p.c_prev_prev, p.c_prev, p.c, space.nodes, p.reduction,
            p.reduction_prev))
        self.genotype = genotype


def checkpoint_payload(model, meta: dict | None = None, **extra) -> dict:
    """What a trained-model checkpoint holds: genotype (as JSON-able dict), weights, meta.

    meta carries what inference needs without the dataset: class_names, palette, mean, std,
    and provenance (dataset, config, epoch, measured mIoU). Loads with weights_only=True.
    A torchvision peer (`gasnas.models.build_peer`, trained with `gasnas train --peer`)
    is recorded by its name under "peer" instead of a genotype.
    """
    peer = getattr(model, "peer", None)
    arch = {"peer": peer} if peer else {"genotype": model.genotype.to_dict()}
    return {**arch, "model": model.state_dict(), "meta": meta or {}, **extra}


def load_derived_checkpoint(path) -> tuple[DerivedNet, dict]:
    """Rebuild a DerivedNet from a checkpoint written with `checkpoint_payload` (any run type)."""

    return derived_from_checkpoint(torch_load(path), path)


def derived_from_checkpoint(ckpt: Any, path: Any) -> tuple[DerivedNet, dict]:
    """`load_derived_checkpoint` for a checkpoint already read (`path` names it in errors)."""

    if not isinstance(ckpt, dict) or "genotype" not in ckpt or "model" not in ckpt:
        raise GasnasError(f"{path}: not a trained-network checkpoint (needs 'genotype' and 'model')")
    genotype = Genotype.from_dict(ckpt["genotype"], f"{path}:genotype")
    model = DerivedNet(genotype)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise GasnasError(f"{path}: weights do not match the genotype ({str(exc).splitlines()[0]})") from None
    return model, dict(ckpt.get("meta") or {})
