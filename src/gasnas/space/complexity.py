"""Parameter and FLOP counts, shared by `arch show`, `bench` and reports."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: tuple[int, int] | list[int]) -> int:
    """FLOPs of one batch-1 forward (a multiply-add counts as 2), via torch's FlopCounterMode."""
    h, w = int(input_size[0]), int(input_size[1])
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, h, w, device=next(model.parameters()).device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
