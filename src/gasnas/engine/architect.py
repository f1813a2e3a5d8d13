"""The architecture step: where α (one tensor per cell) and the GGM (θ, φ, W) are updated.

First-order DARTS: on a batch of the ARCHITECTURE split, minimise

    L_arch = CE(supernet(x), y) + latency_loss(E[Lat](softmax(α')), λ)

where α' = GGM(α) (`Supernet.op_weights()`), E[Lat] is the differentiable expected latency of
the latency lookup table (`gasnas.latency.LatencyEstimator.expected_ms`) and `latency_loss`
applies the `latency.loss` mode (linear λ·E, log, or target hinge). Only α and the GGM move:
the optimizer holds nothing else and the network weights are frozen for this step (their
gradients are not even computed). Adam(lr search.a_lr, betas search.a_betas, wd
search.a_weight_decay). With several processes the α/GGM gradients are averaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gasnas.engine import distributed as D


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
    """Owns the architecture optimizer; `step(images, labels, lam)` is one α + GGM update."""

    def __init__(self, supernet: Any, estimator: Any, criterion: nn.Module, search_cfg: Any,
                 latency_cfg: Any, info: D.DistInfo | None = None) -> None:
        self.supernet, self.estimator, self.criterion = supernet, estimator, criterion
        self.latency_cfg = latency_cfg
        self.budget_scale = 1.0  # set by the search each epoch (latency.target_basis)
        self.info = info or D.DistInfo()
        self.params = list(supernet.arch_parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=search_cfg.a_lr,
                                          betas=tuple(search_cfg.a_betas),
                                          weight_decay=search_cfg.a_weight_decay)

    def loss(self, images: torch.Tensor, labels: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
        """The architecture loss and its parts (all tensors; `loss` is differentiable)."""
        from gasnas.latency import latency_loss

        ce = self.criterion(self.supernet(images), labels, self.info)
        expected_ms = self.estimator.expected_ms(self.supernet.op_weights())
        lat = latency_loss(expected_ms, self.latency_cfg, lam, self.budget_scale)
        return {"loss": ce + lat, "ce": ce, "lat_loss": lat, "expected_ms": expected_ms}

    def step(self, images: torch.Tensor, labels: torch.Tensor, lam: float) -> dict[str, float]:
        """One update. Returns the losses averaged over processes (python floats) and
        `finite`; a non-finite loss leaves α and the GGM untouched (the caller stops the run)."""
        weights = self.supernet.weight_parameters()
        self.optimizer.zero_grad(set_to_none=True)
        with frozen(weights):
            parts = self.loss(images, labels, lam)
            parts["loss"].backward()
        values = D.global_mean(torch.stack([parts[k].detach().float().reshape(())
                                            for k in ("loss", "ce", "lat_loss")]), self.info)
        finite = bool(torch.isfinite(values).all())
        if finite:
            D.average_gradients(self.params, self.info)
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        loss, ce, lat = values.tolist()
        return {"loss": loss, "ce": ce, "lat_loss": lat,
                "expected_ms": float(parts["expected_ms"].detach()), "finite": finite}

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
