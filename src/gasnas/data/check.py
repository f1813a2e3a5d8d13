"""`gasnas data check`: pairs per split, class pixel histogram, and every problem, one per line.

Problems: image without label, label without image, size mismatch, unreadable or truncated
file, label not single-channel, label values outside the class set, empty split (and, for a
CamVid root with lists, files the list does not name). Clean → exit 0, else exit 2.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gasnas.data.layouts import (
    BAD_VALUES,
    EMPTY_SPLIT,
    SIZE_MISMATCH,
    UNREADABLE,
    Layout,
    Pair,
    Problem,
    detect_format,
    get_layout,
)
from gasnas.errors import GasnasError

NOT_SINGLE_CHANNEL = "label not single-channel"


@dataclass
class CheckReport:
    root: Path
    format: str
    class_names: list[str]
    pairs: dict[str, int] = field(default_factory=dict)
    # per split: pixel counts [K classes, ignored, invalid]
    hist: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"dataset {self.root} (format {self.format})"]
        for split, n in self.pairs.items():
            out.append(f"  {split}: {n} pairs")
        splits = [s for s in self.hist if self.hist[s].sum() > 0]
        if splits:
            total = sum(self.hist[s] for s in splits)
            names = self.class_names + ["(ignored)", "(invalid)"]
            width = max(12, max(len(n) for n in names) + 2)
            out.append("class pixel histogram (% of pixels):")
            out.append("  " + "class".ljust(width) + "".join(f"{s:>10}" for s in splits) + f"{'all':>10}{'pixels':>14}")
            for k, name in enumerate(names):
                if k == len(names) - 1 and total[k] == 0:
                    continue
                row = "".join(f"{100 * self.hist[s][k] / max(self.hist[s].sum(), 1):>9.2f}%" for s in splits)
                out.append(f"  {name.ljust(width)}{row}{100 * total[k] / max(total.sum(), 1):>9.2f}%{int(total[k]):>14d}")
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out.extend(f"  {p.format(self.root)}" for p in self.problems)
            out.append(f"NOT CLEAN: {len(self.problems)} problem(s), {sum(self.pairs.values())} pairs checked in {self.seconds:.1f} s")
        else:
            out.append(f"clean: {sum(self.pairs.values())} pairs in {len(self.pairs)} split(s), no problems ({self.seconds:.1f} s)")
        return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _open(path: Path):
    """Fully decoded PIL image, or a problem detail string."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()  # decodes everything: truncated or corrupt data fails here
        return im
    except UnidentifiedImageError:
        return "not a recognised image file"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        return _one_line(exc)


def check_pair(pair: Pair, layout: Layout, k: int) -> tuple[list[Problem], np.ndarray]:
    """Problems of one pair and its label histogram [K classes, ignored, invalid]."""
    problems: list[Problem] = []
    hist = np.zeros(k + 2, dtype=np.int64)
    img = _open(pair.image)
    if isinstance(img, str):
        problems.append(Problem(pair.image, UNREADABLE, img))
    lbl = _open(pair.label)
    if isinstance(lbl, str):
        problems.append(Problem(pair.label, UNREADABLE, lbl))
        return problems, hist
    if lbl.mode not in ("L", "P", "1") and not lbl.mode.startswith("I"):
        problems.append(Problem(pair.label, NOT_SINGLE_CHANNEL, f"mode {lbl.mode}; expected one class index per pixel"))
        return problems, hist
    if not isinstance(img, str) and img.size != lbl.size:
        problems.append(Problem(pair.label, SIZE_MISMATCH, f"label {lbl.size[0]}x{lbl.size[1]}, image {pair.image.name} {img.size[0]}x{img.size[1]}"))
    raw = np.asarray(lbl)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if raw.dtype == np.uint8:
        counts = np.bincount(raw.ravel(), minlength=256)
        extra: dict[int, int] = {}
    else:
        values, n = np.unique(raw, return_counts=True)
        counts = np.zeros(256, dtype=np.int64)
        inside = (values >= 0) & (values < 256)
        counts[values[inside]] = n[inside]
        extra = {int(v): int(c) for v, c in zip(values[~inside], n[~inside], strict=True)}
    lut, valid = layout.label_table(pair.label)
    bad = np.nonzero((counts > 0) & ~valid)[0]
    if len(bad) or extra:
        listed = [f"{int(v)} ({int(counts[v])} px)" for v in bad] + [f"{v} ({c} px)" for v, c in extra.items()]
        more = f", ... {len(listed) - 8} more" if len(listed) > 8 else ""
        problems.append(Problem(pair.label, BAD_VALUES, "values " + ", ".join(listed[:8]) + more))
    mapped = np.bincount(lut, weights=counts * valid, minlength=256).astype(np.int64)
    hist[:k] = mapped[:k]
    hist[k] = mapped[255]
    hist[k + 1] = counts[~valid].sum() + sum(extra.values())
    return problems, hist


def check_dataset(
    root: str | Path,
    fmt: str | None = None,
    splits: list[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> CheckReport:
    """Check every pair of every split (or of `splits`); never raises for a bad file."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    root = Path(root)
    fmt = fmt or detect_format(root)
    layout = get_layout(fmt, root)
    layout.require_root()
    try:
        names = layout.class_names()
        found = layout.splits()
    except OSError as exc:
        raise GasnasError(f"{root}: cannot read ({_one_line(exc)})") from None
    report = CheckReport(root, fmt, names)
    todo = list(splits) if splits else found
    if not todo:
        report.problems.append(Problem(root, EMPTY_SPLIT, f"no splits found for format {fmt}"))
    pairs: list[tuple[str, Pair]] = []
    for split in todo:
        try:
            listing = layout.listing(split)
        except OSError as exc:
            raise GasnasError(f"{root}: cannot list split '{split}' ({_one_line(exc)})") from None
        report.pairs[split] = len(listing.pairs)
        report.hist[split] = np.zeros(len(names) + 2, dtype=np.int64)
        report.problems.extend(listing.problems)
        pairs.extend((split, p) for p in listing.pairs)
    k = len(names)
    bar = tqdm(total=2 * len(pairs), desc=f"check {root.name}", unit="file", disable=not progress)

    def one(item: tuple[str, Pair]) -> tuple[str, list[Problem], np.ndarray]:
        split, pair = item
        return (split, *check_pair(pair, layout, k))

    results: Callable
    if workers > 1 and len(pairs) > 1:
        from concurrent.futures import ThreadPoolExecutor  # PIL decodes without the GIL

        ex = ThreadPoolExecutor(max_workers=workers)
        results = lambda: ex.map(one, pairs, chunksize=8)  # noqa: E731
    else:
        ex = None
        results = lambda: map(one, pairs)  # noqa: E731
    try:
        for split, problems, hist in results():
            report.problems.extend(problems)
            report.hist[split] += hist
            bar.update(2)
    finally:
        bar.close()
        if ex is not None:
            ex.shutdown()
    report.problems.sort(key=lambda p: (p.format(root), p.kind))
    report.seconds = time.perf_counter() - t0
    return report
