"""Metrics, losses, data order and RNG checkpoints: small hand-checked cases, no training."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from gasnas.engine.checkpoint import rng_state, set_rng_state
from gasnas.engine.evaluate import evaluate, predict
from gasnas.engine.losses import CrossEntropy, OhemCrossEntropy, SoftDice, class_weights
from gasnas.engine.metrics import (
    confusion_matrix,
    format_table,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    summarize,
)
from gasnas.engine.sampling import EpochBatches, SeededSamples, split_indices
from gasnas.fileio import torch_load, torch_save_atomic

IGN = 255


def test_confusion_matrix_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGN, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3, IGN)
    # rows = ground truth, columns = prediction; the ignored pixel is not counted
    expected = torch.tensor([[1, 1, 0],
                             [1, 2, 0],
                             [1, 0, 1]])
    assert torch.equal(cm, expected)
    # IoU_0 = 1/(1+2+1)=1/4, IoU_1 = 2/(2+1+1)=1/2, IoU_2 = 1/(1+0+1)=1/2
    assert iou_per_class(cm).tolist() == pytest.approx([0.25, 0.5, 0.5])
    assert mean_iou(cm) == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 7)


def test_absent_class_is_nan_and_excluded() -> None:
    # class 2 never appears in ground truth nor prediction; class 3 only in the ground truth
    target = torch.tensor([0, 0, 1, 3])
    pred = torch.tensor([0, 1, 1, 0])
    cm = confusion_matrix(pred, target, 4, IGN)
    iou = iou_per_class(cm)
    assert math.isnan(iou[2])
    assert iou[3] == 0.0  # present in GT, never predicted right: counts as 0, not excluded
    # IoU_0 = 1/(1+1+1) = 1/3, IoU_1 = 1/(1+1) = 1/2, IoU_3 = 0
    assert mean_iou(cm) == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
    text = format_table(summarize(cm, ["a", "b", "c", "d"]))
    assert "n/a" in text and "mIoU" in text


def test_labels_outside_classes_are_ignored() -> None:
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 7, IGN]), 2, IGN)
    assert int(cm.sum()) == 1


def test_dataset_level_miou_is_not_a_mean_of_images() -> None:
    # image A: 1 pixel of class 0 right; image B: 9 pixels of class 1 all predicted 0.
    a = confusion_matrix(torch.tensor([0]), torch.tensor([0]), 2)
    b = confusion_matrix(torch.zeros(9, dtype=torch.long), torch.ones(9, dtype=torch.long), 2)
    total = a + b
    # dataset level: IoU_0 = 1/(1+9) = 0.1, IoU_1 = 0 → 0.05; per-image average would be 0.5
    assert mean_iou(total) == pytest.approx(0.05)
    assert (mean_iou(a) + mean_iou(b)) / 2 == pytest.approx(0.5)


class _Fixed(nn.Module):
    """Predicts class (x[:, 0] > 0) everywhere — a 'model' with a known output."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = (x[:, :1] > 0).float()
        return torch.cat([1 - on, on], dim=1) * 5 + self.p


def test_evaluate_accumulates_one_matrix_over_batches() -> None:
    x1 = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    y1 = torch.tensor([[1, 0], [0, IGN]]).view(1, 2, 2)
    x2 = torch.full((1, 3, 2, 2), -1.0)
    y2 = torch.tensor([[1, 1], [1, 1]]).view(1, 2, 2)
    loader = [(x1, y1), (x2, y2)]
    model = _Fixed().train()
    seen = []
    res = evaluate(model, loader, 2, IGN, on_prediction=lambda i, im, lab, pr: seen.append(i))
    # predictions: batch1 [[1,0],[1,·]], batch2 all 0. GT/pred pairs: (1,1) (0,0) (0,1) + 4×(1,0)
    cm = torch.tensor([[1, 1], [4, 1]])
    assert torch.equal(res["confusion"], cm)
    assert res["miou"] == pytest.approx(mean_iou(cm))
    assert res["pixel_acc"] == pytest.approx(2 / 7)
    assert seen == [0, 1]
    assert model.training  # mode restored
    # flip + multi-scale TTA of a flip-symmetric, scale-free model changes nothing
    tta = evaluate(model, loader, 2, IGN, flip=True, scales=(1.0, 2.0))
    assert torch.equal(tta["confusion"], cm)
    assert predict(model, x1, flip=True, scales=(0.5, 1.0)).shape == (1, 2, 2, 2)


def test_ohem_and_ce() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, requires_grad=True)
    target = torch.randint(0, 5, (2, 6, 7))
    target[0, 0, :] = IGN
    ce = CrossEntropy(IGN)(logits, target)
    assert ce.item() == pytest.approx(nn.functional.cross_entropy(logits, target, ignore_index=IGN).item(), rel=1e-6)
    # thresh >= 1: every labelled pixel (plain CE)
    assert OhemCrossEntropy(IGN, 1.0, 10)(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)
    # thresh tiny + min_kept k: the k hardest pixels exactly
    per_px = nn.functional.cross_entropy(logits, target, ignore_index=IGN, reduction="none")
    hardest = per_px[target != IGN].topk(10).values.mean()
    assert OhemCrossEntropy(IGN, 1e-9, 10)(logits, target).item() == pytest.approx(hardest.item(), rel=1e-6)
    # default: pixels with p(true) < 0.7, at least min_kept
    ohem = OhemCrossEntropy(IGN, 0.7, 3)(logits, target)
    keep = per_px[(target != IGN)]
    keep = keep[keep > -math.log(0.7)]
    assert ohem.item() == pytest.approx(keep.mean().item(), rel=1e-6)
    ohem.backward()
    assert torch.isfinite(logits.grad).all()
    # everything ignored: 0, still differentiable
    all_ign = torch.full_like(target, IGN)
    assert OhemCrossEntropy(IGN)(logits, all_ign).item() == 0.0


def test_class_weights_formulas() -> None:
    counts = [600, 300, 100, 0]  # class 3 never occurs
    p = np.array([0.6, 0.3, 0.1])
    enet = 1 / np.log(1.02 + p)
    assert class_weights(counts, "enet") == pytest.approx(list(enet / enet.mean()) + [1.0])
    mf = np.median(p) / p
    assert class_weights(counts, "median_freq") == pytest.approx(list(mf / mf.mean()) + [1.0])
    w = class_weights(counts, "median_freq")
    assert w[2] > w[1] > w[0]  # rarer → heavier
    assert class_weights(counts, "none") is None
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_weights([0, 0], "enet")


def test_weighted_ohem_weighs_kept_pixels_by_class() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6))
    target[1, 0, :] = IGN
    weight = [0.5, 1.0, 2.0]
    per_px = nn.functional.cross_entropy(logits, target, ignore_index=IGN, reduction="none")
    valid = target != IGN
    w_px = torch.tensor(weight)[target[valid]]
    # every pixel kept: weighted sum over the number of labelled pixels
    got = OhemCrossEntropy(IGN, 1.0, 10, weight)(logits, target)
    assert got.item() == pytest.approx((per_px[valid] * w_px).sum().item() / valid.sum().item(), rel=1e-6)
    # hard pixels are chosen on the UNWEIGHTED loss, then weighted
    losses = per_px[valid]
    idx = losses.topk(7).indices
    got = OhemCrossEntropy(IGN, 1e-9, 7, weight)(logits, target)
    assert got.item() == pytest.approx((losses[idx] * w_px[idx]).mean().item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()


def test_soft_dice_by_hand_ignores_unlabelled_pixels_and_absent_classes() -> None:
    # 3 classes, 4 pixels: labels [0, 0, 1, ignore]; class 2 is absent from the labels
    target = torch.tensor([[[0, 0, 1, 255]]])
    logits = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.25, 0.25, 0.5, 0.8], [0.25, 0.25, 0.0, 0.1]]))
    logits = logits.reshape(1, 3, 1, 4).clamp(min=-30).requires_grad_(True)
    loss = SoftDice(3, eps=0.0)(logits, target)
    # class 0: I = 1.0, Σp = 1.5, |y| = 2 → 2/3.5;  class 1: I = 0.5, Σp = 1.0, |y| = 1 → 1/2
    assert float(loss.detach()) == pytest.approx(1 - (2 / 3.5 + 0.5) / 2, abs=1e-6)
    loss.backward()
    assert logits.grad[..., 3].abs().max() == 0  # the ignored pixel gets no gradient
    perfect = torch.full((1, 3, 1, 4), -30.0)
    perfect[0, 0, 0, :2] = perfect[0, 1, 0, 2] = 30.0
    assert float(SoftDice(3, eps=0.0)(perfect, target)) == pytest.approx(0.0, abs=1e-6)


def test_epoch_batches_shard_resume_and_seeds() -> None:
    idx = list(range(10, 30))
    one = list(EpochBatches(idx, 4, seed=3, stream=1))
    assert len(one) == 5 and sorted(i for b in one for i, _ in b) == idx
    ranks = [list(EpochBatches(idx, 4, seed=3, stream=1, rank=r, world=2)) for r in range(2)]
    for step in range(5):  # the two ranks' halves make up the one-process global batch, in order
        assert ranks[0][step] + ranks[1][step] == one[step]
    resumed = EpochBatches(idx, 4, seed=3, stream=1)
    resumed.set_epoch(0, start_step=2, limit=4)
    assert list(resumed) == one[2:4] and len(resumed) == 2
    other = EpochBatches(idx, 4, seed=3, stream=1)
    other.set_epoch(1)
    assert list(other) != one  # a new order each epoch
    a, b = split_indices(11, seed=0)
    assert len(a) == 5 and len(b) == 6 and not set(a) & set(b) and split_indices(11, 0) == (a, b)


def test_seeded_samples_fix_augmentation_and_keep_caller_rng() -> None:
    class Rand(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return torch.rand(1).item() + random.random() + float(np.random.rand())

    ds = SeededSamples(Rand())
    torch.manual_seed(1)
    before = torch.get_rng_state()
    assert ds[(0, 42)] == ds[(0, 42)] != ds[(0, 43)]
    assert torch.equal(torch.get_rng_state(), before)


def test_rng_state_round_trip(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = torch_save_atomic({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    set_rng_state(torch_load(path)["rng"])  # weights_only load
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


def test_plot_throttle_redraws_when_forced_or_after_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from gasnas.engine import runtime

    now = [100.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: now[0])
    throttle = runtime.PlotThrottle(every_s=60.0)
    now[0] = 130.0
    assert not throttle.due()
    assert throttle.due(force=True)  # an evaluation or the last epoch: always
    now[0] = 185.0
    assert not throttle.due()  # 55 s after the forced redraw
    now[0] = 191.0
    assert throttle.due()
    assert not throttle.due()
