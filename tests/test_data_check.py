"""`gasnas data check` (every problem kind, on corrupted copies), `data show`, and the real CamVid."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import (
    CAMVID_REAL,
    make_camvid,
    make_cityscapes,
    make_folder,
    rand_image,
    stripes,
    write_png,
)
from PIL import Image

from gasnas.cli import main


def run_check(capsys, root, *extra):
    rc = main(["data", "check", str(root), "--no-progress", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_check_clean_camvid(tmp_path, capsys):
    root = make_camvid(tmp_path / "camvid", {"train": 3, "val": 2})
    rc, out, _ = run_check(capsys, root, "--format", "camvid")
    assert rc == 0
    assert "train: 3 pairs" in out and "val: 2 pairs" in out
    for name in ("Sky", "Building", "Road", "Car", "(ignored)"):
        assert name in out
    assert "clean: 5 pairs" in out and " s)" in out  # elapsed time


def test_check_reports_every_problem(tmp_path, capsys):
    root = make_camvid(tmp_path / "camvid", {"train": 8, "val": 1}, txt=False)
    ann, img = root / "trainannot", root / "train"
    (ann / "0001TP_000000.png").unlink()  # image without label
    (img / "0001TP_000001.png").unlink()  # label without image
    write_png(ann / "0001TP_000002.png", stripes([0, 1], 20, 30))  # size mismatch
    (img / "0001TP_000003.png").write_bytes(b"this is not a png")  # unreadable
    data = (img / "0001TP_000004.png").read_bytes()
    (img / "0001TP_000004.png").write_bytes(data[: len(data) // 2])  # truncated
    write_png(ann / "0001TP_000005.png", stripes([0, 20, 3, 200]))  # values outside the class set
    write_png(ann / "0001TP_000006.png", rand_image(1))  # RGB label
    (root / "test").mkdir()  # empty split
    (root / "testannot").mkdir()
    rc, out, _ = run_check(capsys, root, "--format", "camvid", "--workers", "2")
    assert rc == 2
    expected = [
        "train/0001TP_000000.png: image without label",
        "trainannot/0001TP_000001.png: label without image",
        "trainannot/0001TP_000002.png: size mismatch",
        "train/0001TP_000003.png: unreadable or truncated file",
        "train/0001TP_000004.png: unreadable or truncated file",
        "trainannot/0001TP_000005.png: label values outside the class set (values 20 (",
        "trainannot/0001TP_000006.png: label not single-channel",
        "test: empty split",
    ]
    lines = out.splitlines()
    for text in expected:
        assert sum(text in line for line in lines) == 1, text
    assert "200 (" in out
    assert "problems (8):" in out and "NOT CLEAN: 8 problem(s)" in out


def test_check_segnet_lists(tmp_path, capsys):
    root = make_camvid(tmp_path / "camvid", {"train": 3})
    (root / "trainannot" / "0001TP_000001.png").unlink()
    write_png(root / "train" / "extra.png", rand_image(3))
    with open(root / "train.txt", "a") as f:
        f.write("only-one-column\n")
    rc, out, _ = run_check(capsys, root)
    assert rc == 2
    assert "train/0001TP_000001.png: image without label (trainannot/0001TP_000001.png listed in train.txt is missing)" in out
    assert "train/extra.png: not listed (in train.txt; ignored)" in out
    assert "train.txt: bad list entry (line 4" in out


def test_check_cityscapes_problems(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs", {"train": 3})
    rc, out, _ = run_check(capsys, root)
    assert rc == 0 and "format cityscapes" in out and "train: 3 pairs" in out and "road" in out
    gt = root / "gtFine" / "train"
    (gt / "aachen" / "aachen_000000_000019_gtFine_labelIds.png").unlink()
    write_png(gt / "bochum" / "bochum_000009_000019_gtFine_labelIds.png", stripes([7]))
    write_png(gt / "aachen" / "aachen_000002_000019_gtFine_labelIds.png", stripes([7, 40]))
    rc, out, _ = run_check(capsys, root, "--format", "cityscapes")
    assert rc == 2
    assert "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png: image without label" in out
    assert "gtFine/train/bochum/bochum_000009_000019_gtFine_labelIds.png: label without image" in out
    assert "aachen_000002_000019_gtFine_labelIds.png: label values outside the class set (values 40" in out


def test_check_folder_problems(tmp_path, capsys):
    root = make_folder(tmp_path / "f", {"train": 2, "val": 1})
    rc, out, _ = run_check(capsys, root)
    assert rc == 0 and "format folder" in out and "crack" in out
    write_png(root / "masks" / "train" / "img0.png", stripes([0, 5]))
    write_png(root / "masks" / "val" / "lonely.png", stripes([0]))
    rc, out, _ = run_check(capsys, root, "--format", "folder")
    assert rc == 2
    assert "masks/train/img0.png: label values outside the class set (values 5" in out
    assert "masks/val/lonely.png: label without image" in out


def test_check_missing_root_is_one_line(tmp_path, capsys):
    rc, out, err = run_check(capsys, tmp_path / "nope", "--format", "camvid")
    assert rc == 2 and err.startswith("gasnas: error:") and "nope" in err and err.count("\n") == 1


@pytest.mark.skipif(not CAMVID_REAL.is_dir(), reason="../shared/data/camvid not present")
def test_check_real_camvid(capsys):
    rc, out, _ = run_check(capsys, CAMVID_REAL, "--format", "camvid")
    assert rc == 0, out[-2000:]
    assert "train: 367 pairs" in out and "val: 101 pairs" in out and "clean: 468 pairs" in out


@pytest.mark.parametrize("fmt", ["camvid", "cityscapes", "folder"])
def test_show_grid(tmp_path, capsys, fmt):
    make = {"camvid": make_camvid, "cityscapes": make_cityscapes, "folder": make_folder}[fmt]
    root = make(tmp_path / fmt)
    out = tmp_path / "grid.png"
    assert main(["data", "show", str(root), "-n", "3", "--out", str(out), "--format", fmt]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert np.asarray(Image.open(out)).std() > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_show_errors(tmp_path, capsys):
    assert main(["data", "show", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")]) == 2
    root = make_camvid(tmp_path / "camvid", {"train": 1})
    assert main(["data", "show", str(root), "--split", "val", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "empty split 'val'" in err
