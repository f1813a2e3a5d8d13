"""The best mIoU a network that classifies at 1/s of the input could reach on a split.

For each scale s the ground truth is one-hot encoded, area-averaged down to 1/s (what an ideal
classifier at that resolution could output), bilinearly upsampled back (what gasnas does with
its logits) and arg-maxed; the mIoU of that against the ground truth is the ceiling. Thin classes
(poles, pedestrians, cyclists) lose most. It tells where a head must classify for a given goal.

    python benchmarks/resolution_ceiling.py [--config demo] [--split val] [--scales 8,4,2] [--set K=V]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--split", default=None)
    ap.add_argument("--scales", default="8,4,2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from gasnas.config import load_config
    from gasnas.data import build_dataset, class_names
    from gasnas.engine.metrics import confusion_matrix, summarize

    cfg = load_config(args.config, args.set)
    n = cfg.data.num_classes
    dataset = build_dataset(cfg.data, args.split or cfg.data.val_split, train=False)
    labels = [dataset[i][1] for i in range(len(dataset))]
    print(f"{cfg.data.format} {args.split or cfg.data.val_split}: {len(labels)} labels of "
          f"{tuple(labels[0].shape)}")
    names = class_names(cfg.data)
    for s in (int(v) for v in args.scales.split(",")):
        cm = torch.zeros(n, n, dtype=torch.long)
        for y in labels:
            h, w = y.shape
            onehot = F.one_hot(y.clamp(0, n), n + 1).permute(2, 0, 1).float()[None, :n]
            small = F.interpolate(onehot, size=(-(-h // s), -(-w // s)), mode="area")
            pred = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).argmax(1)[0]
            cm += confusion_matrix(pred, y, n, cfg.data.ignore_index)
        r = summarize(cm, list(names))
        per_class = ", ".join(f"{c} {100 * v:.0f}" for c, v in zip(names, r["iou"]))
        print(f"1/{s}: ceiling mIoU {100 * r['miou']:.1f}  ({per_class})")


if __name__ == "__main__":
    main()
