"""The supernet-step benchmark's baseline: a DARTS mixed op that computes `none` too, and the same
function as the fast supernet (benchmarks/supernet_step.py compares their speed)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import supernet_step  # noqa: E402


class CountZeroMul(TorchFunctionMode):
    """Counts x.mul(0.0): DARTS' Zero op."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.mul and len(args) == 2 and isinstance(args[1], float) and args[1] == 0.0:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_darts_baseline_computes_none_and_matches_fast() -> None:
    torch.manual_seed(0)
    fast = supernet_step.make(True).eval()
    naive = supernet_step.make(False).eval()
    skips = supernet_step.make(False, darts_none=False).eval()
    naive.load_state_dict(fast.state_dict())
    skips.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 96)
    mixed_ops = sum(len(cell.mixed) for cell in naive.cells)
    with torch.no_grad():
        with CountZeroMul() as counted:
            y_naive = naive(x)
        assert counted.calls == mixed_ops  # one Zero per mixed op (the default space has `none`)
        with CountZeroMul() as counted:
            y_skips = skips(x)
        assert counted.calls == 0
        y_fast = fast(x)
    assert y_naive.shape == y_fast.shape == (2, 11, 64, 96)
    torch.testing.assert_close(y_naive, y_fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_skips, y_naive, atol=1e-6, rtol=1e-6)
