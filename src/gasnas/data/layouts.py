"""Where the files are: one `Layout` per on-disk format, listing image/label pairs per split.

A listing never raises for a missing file: it returns the pairs it found and a `Problem` for
everything that does not pair up, so the dataset (which uses the pairs) and `gasnas data check`
(which prints the problems) share one definition of the layout.

- camvid (and synthetic): `train/ trainannot/ val/ valannot/ test/ testannot/`, optional
  `train.txt`-style lists (`/SegNet/CamVid/` prefix stripped); without a list, pair by name.
- cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` ↔
  `gtFine/<split>/<city>/*_gtFine_labelIds.png` (or `*_gtFine_labelTrainIds.png`).
- folder: `images/<split>/`, `masks/<split>/` (same stem, .png mask), `classes.yaml`; without
  split subfolders everything is `train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gasnas.data import classes as C
from gasnas.errors import GasnasError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
FORMATS = ("synthetic", "camvid", "cityscapes", "folder")
SEGNET_PREFIX = "/SegNet/CamVid/"

# Problem kinds (one line each in `gasnas data check`).
IMAGE_WITHOUT_LABEL = "image without label"
LABEL_WITHOUT_IMAGE = "label without image"
SIZE_MISMATCH = "size mismatch"
UNREADABLE = "unreadable or truncated file"
BAD_VALUES = "label values outside the class set"
EMPTY_SPLIT = "empty split"
NOT_LISTED = "not listed"
BAD_LIST = "bad list entry"


@dataclass(frozen=True)
class Pair:
    image: Path
    label: Path


@dataclass(frozen=True)
class Problem:
    path: Path
    kind: str
    detail: str = ""

    def format(self, root: Path) -> str:
        text = f"{rel(self.path, root)}: {self.kind}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass
class Listing:
    split: str
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _files(folder: Path, exts: set[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    )  # fmt: skip


def _order(splits: set[str]) -> list[str]:
    known = [s for s in ("train", "val", "test") if s in splits]
    return known + sorted(splits - set(known))


class Layout:
    """Base: a dataset root in one format."""

    format = ""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def require_root(self) -> None:
        if not self.root.is_dir():
            raise GasnasError(f"{self.root}: dataset root not found (format {self.format})")

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def palette(self) -> np.ndarray:
        raise NotImplementedError

    def splits(self) -> list[str]:
        raise NotImplementedError

    def listing(self, split: str) -> Listing:
        raise NotImplementedError

    def label_table(self, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(lut raw→train id with 255 = ignored, valid raw values) for one label file."""
        raise NotImplementedError

    def split_dir(self, split: str) -> Path:
        """The folder an 'empty split' problem names."""
        return self.root / split

    def _finish(self, listing: Listing) -> Listing:
        listing.pairs.sort(key=lambda p: str(p.image))
        if not listing.pairs:
            listing.problems.append(Problem(self.split_dir(listing.split), EMPTY_SPLIT, "no image/label pairs"))
        return listing


def _pair_by_stem(listing: Listing, images: list[Path], labels: dict[str, Path], label_dir: Path) -> None:
    used = set()
    for img in images:
        lbl = labels.get(img.stem)
        if lbl is None:
            listing.problems.append(Problem(img, IMAGE_WITHOUT_LABEL, f"expected {label_dir.name}/{img.stem}.png"))
        else:
            used.add(img.stem)
            listing.pairs.append(Pair(img, lbl))
    for stem, lbl in sorted(labels.items()):
        if stem not in used:
            listing.problems.append(Problem(lbl, LABEL_WITHOUT_IMAGE))


class CamVidLayout(Layout):
    format = "camvid"

    def class_names(self) -> list[str]:
        return list(C.CAMVID_CLASSES)

    def palette(self) -> np.ndarray:
        return C.CAMVID_PALETTE.copy()

    def label_table(self, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
        return C.CAMVID_LUT, C.CAMVID_VALID

    def splits(self) -> list[str]:
        self.require_root()
        found = set()
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith("."):
                found.add(d.name[: -len("annot")] if d.name.endswith("annot") else d.name)
        for t in self.root.glob("*.txt"):
            if t.stem in ("train", "val", "test") or t.stem in found:
                found.add(t.stem)
        return _order({s for s in found if s})

    def _resolve(self, entry: str) -> Path:
        if entry.startswith(SEGNET_PREFIX):
            return self.root / entry[len(SEGNET_PREFIX):]
        p = Path(entry)
        if p.is_absolute():
            return p if p.exists() else self.root / Path(*p.parts[-2:])
        return self.root / p

    def listing(self, split: str) -> Listing:
        self.require_root()
        listing = Listing(split)
        img_dir, lbl_dir = self.root / split, self.root / f"{split}annot"
        txt = self.root / f"{split}.txt"
        if not txt.is_file():
            labels = {p.stem: p for p in _files(lbl_dir, {".png"})}
            _pair_by_stem(listing, _files(img_dir, IMAGE_EXTS), labels, lbl_dir)
            return self._finish(listing)
        listed: set[Path] = set()
        try:
            lines = txt.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            listing.problems.append(Problem(txt, UNREADABLE, type(exc).__name__))
            lines = []
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                listing.problems.append(Problem(txt, BAD_LIST, f"line {n}: expected 'IMAGE LABEL'"))
                continue
            img, lbl = self._resolve(parts[0]), self._resolve(parts[1])
            listed.update((img, lbl))
            has_img, has_lbl = img.is_file(), lbl.is_file()
            if has_img and has_lbl:
                listing.pairs.append(Pair(img, lbl))
            elif has_img:
                listing.problems.append(Problem(img, IMAGE_WITHOUT_LABEL, f"{rel(lbl, self.root)} listed in {txt.name} is missing"))
            elif has_lbl:
                listing.problems.append(Problem(lbl, LABEL_WITHOUT_IMAGE, f"{rel(img, self.root)} listed in {txt.name} is missing"))
            else:
                listing.problems.append(Problem(txt, BAD_LIST, f"line {n}: neither {parts[0]} nor {parts[1]} exists"))
        for p in _files(img_dir, IMAGE_EXTS) + _files(lbl_dir, {".png"}):
            if p not in listed:
                listing.problems.append(Problem(p, NOT_LISTED, f"in {txt.name}; ignored"))
        return self._finish(listing)


CS_IMG = "_leftImg8bit.png"
CS_LABELS = ("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")


class CityscapesLayout(Layout):
    format = "cityscapes"

    def class_names(self) -> list[str]:
        return C.cityscapes_classes()

    def palette(self) -> np.ndarray:
        return C.cityscapes_palette()

    def label_table(self, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
        return C.cityscapes_label_lut(label_path)

    def split_dir(self, split: str) -> Path:
        return self.root / "leftImg8bit" / split

    def splits(self) -> list[str]:
        self.require_root()
        found = set()
        for top in ("leftImg8bit", "gtFine"):
            d = self.root / top
            if d.is_dir():
                found.update(s.name for s in d.iterdir() if s.is_dir() and not s.name.startswith("."))
        return _order(found)

    def listing(self, split: str) -> Listing:
        self.require_root()
        listing = Listing(split)
        img_root, gt_root = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        images = {
            (p.parent.name, p.name[: -len(CS_IMG)]): p
            for p in (sorted(img_root.glob(f"*/*{CS_IMG}")) if img_root.is_dir() else [])
        }
        labels: dict[tuple[str, str], list[Path]] = {}
        for suffix in CS_LABELS:
            for p in sorted(gt_root.glob(f"*/*{suffix}")) if gt_root.is_dir() else []:
                labels.setdefault((p.parent.name, p.name[: -len(suffix)]), []).append(p)
        for key, img in sorted(images.items()):
            if key in labels:
                listing.pairs.append(Pair(img, labels[key][0]))  # labelIds first when both exist
            else:
                listing.problems.append(Problem(img, IMAGE_WITHOUT_LABEL, f"expected gtFine/{split}/{key[0]}/{key[1]}{CS_LABELS[0]}"))
        for key, lbls in sorted(labels.items()):
            if key not in images:
                listing.problems.extend(Problem(p, LABEL_WITHOUT_IMAGE) for p in lbls)
        return self._finish(listing)


class FolderLayout(Layout):
    format = "folder"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._classes: tuple[list[str], np.ndarray, int] | None = None

    def _read(self) -> tuple[list[str], np.ndarray, int]:
        if self._classes is None:
            self.require_root()
            self._classes = C.read_classes_yaml(self.root)
        return self._classes

    def class_names(self) -> list[str]:
        return list(self._read()[0])

    def palette(self) -> np.ndarray:
        return self._read()[1].copy()

    def label_table(self, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
        names, _, ignore = self._read()
        return C.identity_lut(len(names)), C.valid_values(list(range(len(names))) + [ignore])

    def _flat(self) -> bool:
        return not any(
            d.is_dir() and not d.name.startswith(".")
            for top in ("images", "masks") if (self.root / top).is_dir()
            for d in (self.root / top).iterdir()
        )  # fmt: skip

    def _dirs(self, split: str) -> tuple[Path, Path]:
        if self._flat():
            if split == "train":
                return self.root / "images", self.root / "masks"
            return self.root / "images" / split, self.root / "masks" / split  # absent: empty split
        return self.root / "images" / split, self.root / "masks" / split

    def split_dir(self, split: str) -> Path:
        return self._dirs(split)[0]

    def splits(self) -> list[str]:
        self._read()
        if self._flat():
            return ["train"] if (self.root / "images").is_dir() or (self.root / "masks").is_dir() else []
        found = set()
        for top in ("images", "masks"):
            d = self.root / top
            if d.is_dir():
                found.update(s.name for s in d.iterdir() if s.is_dir() and not s.name.startswith("."))
        return _order(found)

    def listing(self, split: str) -> Listing:
        self._read()
        listing = Listing(split)
        img_dir, mask_dir = self._dirs(split)
        labels = {p.stem: p for p in _files(mask_dir, {".png"})}
        _pair_by_stem(listing, _files(img_dir, IMAGE_EXTS), labels, mask_dir)
        return self._finish(listing)


def get_layout(fmt: str, root: str | Path) -> Layout:
    if fmt in ("camvid", "synthetic"):
        layout: Layout = CamVidLayout(root)
        layout.format = fmt
        return layout
    if fmt == "cityscapes":
        return CityscapesLayout(root)
    if fmt == "folder":
        return FolderLayout(root)
    raise GasnasError(f"unknown data format '{fmt}' (valid: {', '.join(FORMATS)})")


def detect_format(root: str | Path) -> str:
    """Guess the format of a dataset root from its folders (camvid when nothing else fits)."""
    root = Path(root)
    if not root.is_dir():
        raise GasnasError(f"{root}: dataset root not found")
    if (root / "leftImg8bit").is_dir() or (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "classes.yaml").is_file() or (root / "images").is_dir():
        return "folder"
    return "camvid"
