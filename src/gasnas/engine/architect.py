"""The architecture step: where α (one tensor per cell) and the GGM (θ, φ, W) are updated.

First-order DARTS: on a batch of the ARCHITECTURE split, minimise

    L_arch = CE(supernet(x; w), y) + latency_loss(E[Lat](w_lat), λ_eff)

where w are the step's cell weights from α' = GGM(α) (engine/relaxation.py: softmax(α'), or a
sampled single path), E[Lat] is the differentiable expected latency of the latency lookup table
(`gasnas.latency.LatencyEstimator.expected_ms`), and λ_eff, the per-stage balance and the budget
come from the search's one λ / budget policy (latency/budget.py `LatencyBudget`), which
`latency_loss` applies in the `latency.loss` mode (linear λ·E, log, or target hinge). Only α and the GGM move:
the optimizer holds nothing else and the network weights are frozen for this step (their
gradients are not even computed). Adam(lr search.a_lr, betas search.a_betas, wd
search.a_weight_decay). With several processes the α/GGM gradients are averaged. Under
`search.amp` only the supernet's forward and the cross-entropy are autocast: α' (the GGM), the
latency term and the Adam step stay fp32 (engine/amp.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gasnas.engine import distributed as D
from gasnas.engine.amp import Precision
from gasnas.engine.relaxation import Relaxation, net_weight_tensors
from gasnas.latency.budget import LatencyBudget


@contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Temporarily requires_grad=False on `params` (no gradient computed, none accumulated)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class Architect:
    """Owns the architecture optimizer; `step(images, labels, epoch, step, steps_per_epoch)` is
    one α + GGM update. Two parameter groups: α with `search.a_weight_decay`, the GGM without
    (a decay would pull θ, φ, W back to zero faster than their small gradients move them) and at
    `search.ggm_lr_scale` times α's learning rate."""

    def __init__(self, supernet: Any, criterion: nn.Module, search_cfg: Any, budget: LatencyBudget,
                 relaxation: Relaxation, info: D.DistInfo | None = None,
                 precision: Precision | None = None) -> None:
        self.supernet, self.criterion, self.search_cfg = supernet, criterion, search_cfg
        self.budget, self.relaxation = budget, relaxation
        self.info = info or D.DistInfo()
        self.amp = precision or Precision("none", "cpu")
        self.params = list(supernet.arch_parameters())
        groups = [{"params": list(supernet.alphas), "weight_decay": search_cfg.a_weight_decay, "lr_scale": 1.0}]
        if supernet.ggm_parameters():
            groups.append({"params": supernet.ggm_parameters(), "weight_decay": 0.0,
                           "lr_scale": float(search_cfg.ggm_lr_scale)})
        self.optimizer = torch.optim.Adam(groups, lr=search_cfg.a_lr, betas=tuple(search_cfg.a_betas))

    def loss(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int,
             steps_per_epoch: int) -> dict[str, Any]:
        """The architecture loss and its parts (`loss` is differentiable). `ce_grads` fills with
        the cross-entropy's gradient on each cell's op weights during backward."""
        net_w, lat_w = self.relaxation.step_weights(self.supernet, epoch, step, steps_per_epoch, arch=True)
        ce_grads: list[torch.Tensor | None] = [None] * len(net_w)
        for k, t in enumerate(net_weight_tensors(net_w)):
            if t.requires_grad:
                t.register_hook(lambda g, k=k: ce_grads.__setitem__(k, g.detach()))
        with self.supernet.using(net_w), self.amp.autocast():
            ce = self.criterion(self.supernet(images), labels, self.info).float()
        lat, expected_ms = self.budget.loss(lat_w, epoch, step, steps_per_epoch)
        return {"loss": ce + lat, "ce": ce, "lat_loss": lat, "expected_ms": expected_ms, "ce_grads": ce_grads}

    def lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """search.a_lr, or cosine from it to search.a_lr_min over the search epochs (per step)."""
        sc = self.search_cfg
        if sc.a_lr_min is None:
            return float(sc.a_lr)
        total = max(1, (sc.epochs - sc.warmup_epochs) * steps_per_epoch - 1)
        done = min(total, max(0, (epoch - sc.warmup_epochs) * steps_per_epoch + step))
        return float(sc.a_lr_min + 0.5 * (sc.a_lr - sc.a_lr_min) * (1 + math.cos(math.pi * done / total)))

    def step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int = 0, step: int = 0,
             steps_per_epoch: int = 1) -> dict[str, Any]:
        """One update. Returns the losses averaged over processes (python floats) and
        `finite`; a non-finite loss leaves α and the GGM untouched (the caller stops the run)."""
        lr = self.lr(epoch, step, steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        weights = self.supernet.weight_parameters()
        self.optimizer.zero_grad(set_to_none=True)
        with frozen(weights):
            parts = self.loss(images, labels, epoch, step, steps_per_epoch)
            self.amp.backward(parts["loss"])
        values = D.global_mean(torch.stack([parts[k].detach().float().reshape(())
                                            for k in ("loss", "ce", "lat_loss")]), self.info)
        finite = bool(torch.isfinite(values).all())
        if finite:
            D.average_gradients(self.params, self.info)
            scale = self.amp.scale  # the CE gradients the hooks saw carry it (fp16)
            if self.amp.step(self.optimizer):  # fp16: False when a gradient overflowed
                grads = parts["ce_grads"] if scale == 1.0 else [
                    None if g is None else g / scale for g in parts["ce_grads"]]
                self.budget.record_ce_gradients(grads)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        loss, ce, lat = values.tolist()
        return {"loss": loss, "ce": ce, "lat_loss": lat,
                "expected_ms": float(parts["expected_ms"].detach()), "finite": finite}

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
