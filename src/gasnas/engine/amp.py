"""Mixed precision for the search, training and evaluation (`search.amp`, `train.amp`).

`none` (the default): fp32 throughout. `bf16`: the forward pass and the loss run under
`torch.autocast(device type, torch.bfloat16)`; parameters, gradients and optimizer states stay
fp32. `fp16`: float16 autocast plus a `torch.amp.GradScaler`, because fp16's 5-bit exponent
flushes small gradients to zero unless the loss is scaled up first; the scaler's state is part of
the checkpoint, so a resumed run continues with the same scale.

Only the network's forward pass and its loss are autocast. α' = GGM(α) runs with autocast off
(space/supernet.py `guided_alphas`), and the latency term and every optimizer step run outside
autocast, so α and the GGM are computed and updated in fp32. Under autocast the supernet's fused
mixed op steps aside for the plain modules (space/fused.py `fused_allowed`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from gasnas.errors import GasnasError

AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(mode: str, device: torch.device, key: str = "amp") -> None:
    """One-line error where `mode` cannot run on `device` (and why), before a run starts."""
    if mode == "none":
        return
    if mode not in AMP_DTYPES:
        raise GasnasError(f"config key '{key}': {mode!r} is not one of 'none', 'bf16', 'fp16'")
    kind = device.type
    if kind not in ("cpu", "cuda") or not torch.amp.is_autocast_available(kind):
        raise GasnasError(f"{key}={mode}: torch {torch.__version__} has no autocast for device '{kind}' "
                          f"(use {key}=none)")
    if kind == "cuda" and mode == "bf16" and not torch.cuda.is_bf16_supported():
        raise GasnasError(f"{key}=bf16: this GPU has no bfloat16 support (use {key}=fp16)")
    if mode == "fp16":
        try:
            torch.amp.GradScaler(kind)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise GasnasError(f"{key}=fp16: torch {torch.__version__} has no GradScaler for device "
                              f"'{kind}' ({exc}); fp16 without loss scaling loses small gradients "
                              f"(use {key}=bf16)") from None


def autocast(mode: str, device_type: str) -> AbstractContextManager[Any]:
    """torch.autocast for `mode` on `device_type`, or a no-op context for `none`."""
    if mode == "none":
        return nullcontext()
    return torch.autocast(device_type, dtype=AMP_DTYPES[mode])


class Precision:
    """One optimizer's mixed precision: its autocast context, and (fp16) its GradScaler.

    The search keeps one per optimizer (weights; α + GGM), so an fp16 overflow in one step skips
    only that step and backs off only that scale."""

    def __init__(self, mode: str, device: torch.device | str, key: str = "amp") -> None:
        self.device = torch.device(device)
        check_amp(mode, self.device, key)
        self.mode = mode
        self.scaler = torch.amp.GradScaler(self.device.type) if mode == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.mode, self.device.type)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), with the loss scaled first under fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by the scale (before clipping them); no-op without fp16."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    @property
    def scale(self) -> float:
        """The factor the gradients of `backward` carry (1 without fp16)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step(); under fp16 through the scaler, which skips the step when a gradient is
        inf/NaN and then lowers the scale. Returns whether the parameters were updated."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before  # a skipped step backs the scale off

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (plain floats and ints: loads with weights_only=True), or None."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore a scaler; a checkpoint without one (saved without fp16) starts a fresh scale."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
