"""Datasets, transforms and the synthetic generator (tiny images; the whole file runs in seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import (
    CAMVID_REAL,
    H,
    W,
    make_camvid,
    make_cityscapes,
    make_folder,
    rand_image,
    write_png,
)
from PIL import Image
from torchvision.transforms import v2

from gasnas.cli import main
from gasnas.config import DataConfig, load_config
from gasnas.data import (
    MEAN,
    STD,
    build_dataset,
    class_names,
    colorize,
    denormalize,
    ensure_synthetic,
    palette,
)
from gasnas.data.synthetic import render_scene, write_synthetic
from gasnas.data.transforms import eval_transform, train_transform
from gasnas.errors import GasnasError


def cfg_for(fmt: str, root, **kw) -> DataConfig:
    return DataConfig(format=fmt, root=str(root), **kw)


# --------------------------------------------------------------------------- datasets


def _check_sample(image: torch.Tensor, label: torch.Tensor, hw=(H, W)) -> None:
    assert image.dtype == torch.float32 and image.shape == (3, *hw)
    assert label.dtype == torch.int64 and label.shape == hw


def test_camvid_with_segnet_lists(tmp_path):
    root = make_camvid(tmp_path / "camvid", {"train": 3, "val": 2})
    ds = build_dataset(cfg_for("camvid", root), "train", train=False)
    assert len(ds) == 3
    image, label = ds[0]
    _check_sample(image, label)
    assert set(label.unique().tolist()) <= {0, 1, 3, 8, 255}
    assert 255 in label.unique().tolist()  # raw 11 (unlabelled) is ignored
    img0 = np.array(Image.open(ds.pairs[0].image).convert("RGB"))  # normalised with ImageNet's
    expect = (torch.from_numpy(img0).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(image, expect, atol=1e-5)
    assert torch.allclose(denormalize(image), torch.from_numpy(img0).permute(2, 0, 1).float() / 255, atol=1e-5)
    assert class_names(cfg_for("camvid", root))[0] == "Sky" and len(class_names(cfg_for("camvid", root))) == 11
    assert palette(cfg_for("camvid", root)).shape == (11, 3)


def test_camvid_pairs_by_name_without_lists(tmp_path):
    root = make_camvid(tmp_path / "camvid", {"train": 2}, txt=False)
    ds = build_dataset(cfg_for("camvid", root), "train", train=True)
    image, label = ds[1]
    _check_sample(image, label, (360, 480))  # default crop pads the tiny image with ignore
    assert (label == 255).float().mean() > 0.9


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs", {"train": 2, "val": 1})
    cfg = cfg_for("cityscapes", root, num_classes=19)
    ds = build_dataset(cfg, "train", train=False)
    assert len(ds) == 2
    _, label = ds[0]
    # stripes of labelIds [7 road, 26 car, 0 unlabeled, 8 sidewalk] in 4-px blocks
    assert label[0, :4].tolist() == [0] * 4
    assert label[0, 4:8].tolist() == [13] * 4
    assert label[0, 8:12].tolist() == [255] * 4
    assert label[0, 12:16].tolist() == [1] * 4
    assert len(class_names(cfg)) == 19 and class_names(cfg)[0] == "road"
    assert palette(cfg)[0].tolist() == [128, 64, 128]


def test_cityscapes_label_train_ids_are_kept(tmp_path):
    root = make_cityscapes(tmp_path / "cs", {"val": 1}, train_ids=True)
    ds = build_dataset(cfg_for("cityscapes", root, num_classes=19), "val", train=False)
    assert set(ds[0][1].unique().tolist()) == {0, 13, 255}


@pytest.mark.parametrize("flat", [False, True])
def test_folder_dataset(tmp_path, flat):
    root = make_folder(tmp_path / "f", {"train": 2}, flat=flat)
    cfg = cfg_for("folder", root, num_classes=3)
    assert class_names(cfg) == ["background", "crack", "rust"]
    assert palette(cfg).tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    ds = build_dataset(cfg, "train", train=False)
    assert len(ds) == 2
    assert set(ds[0][1].unique().tolist()) == {0, 1, 2, 255}


def test_max_images_take_first_sorted(tmp_path):
    root = make_camvid(tmp_path / "camvid", {"train": 3, "val": 2})
    ds = build_dataset(cfg_for("camvid", root, max_train_images=2), "train", train=False)
    assert [p.image.name for p in ds.pairs] == ["0001TP_000000.png", "0001TP_000001.png"]
    assert len(build_dataset(cfg_for("camvid", root, max_val_images=1), "val", train=False)) == 1


def test_custom_ignore_index(tmp_path):
    root = make_camvid(tmp_path / "camvid", {"train": 1})
    _, label = build_dataset(cfg_for("camvid", root, ignore_index=-1), "train", train=False)[0]
    assert -1 in label.tolist()[0] and 255 not in label.unique().tolist()


def test_dataset_errors_are_one_line_and_name_the_path(tmp_path):
    with pytest.raises(GasnasError, match="nowhere") as e:
        build_dataset(cfg_for("camvid", tmp_path / "nowhere"), "train", train=False)
    assert "\n" not in str(e.value)
    root = make_camvid(tmp_path / "camvid", {"train": 1})
    with pytest.raises(GasnasError, match="test.*empty split"):
        build_dataset(cfg_for("camvid", root), "test", train=False)
    with pytest.raises(GasnasError, match="num_classes=11"):
        build_dataset(cfg_for("camvid", root, num_classes=19), "train", train=False)
    with pytest.raises(GasnasError, match="classes.yaml"):
        class_names(cfg_for("folder", root))


def test_colorize_palette_and_ignore():
    pal = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    out = colorize(np.array([[0, 1], [255, 7]]), pal)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [40, 50, 60]
    assert out[1, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [0, 0, 0]


# --------------------------------------------------------------------------- transforms


def _encoded_pair(seed: int, h: int = 48, w: int = 64):
    """Label in 8x8 blocks of 0..2 and an image that is its one-hot encoding."""
    g = np.random.default_rng(seed)
    blocks = g.integers(0, 3, (h // 8, w // 8))
    label = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    image = np.zeros((3, h, w), np.uint8)
    for c in range(3):
        image[c][label == c] = 255
    return torch.from_numpy(image), torch.from_numpy(label)


def test_train_transform_keeps_image_and_label_aligned():
    t = train_transform([40, 40], [0.5, 2.0], flip=True, color_jitter=0.0)
    torch.manual_seed(0)
    checked = 0
    for seed in range(12):
        image, label = _encoded_pair(seed)
        out, lbl = t(image, label)
        assert out.shape == (3, 40, 40) and lbl.shape == (40, 40) and lbl.dtype == torch.int64
        assert set(lbl.unique().tolist()) <= {0, 1, 2, 255}
        decoded = denormalize(out).argmax(0)
        lab = lbl.numpy()
        same = np.ones_like(lab, bool)  # pixels whose 3x3 neighbourhood has one label
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                same[1:-1, 1:-1] &= lab[1:-1, 1:-1] == lab[1 + dy : lab.shape[0] - 1 + dy, 1 + dx : lab.shape[1] - 1 + dx]
        same[[0, -1], :] = False
        same[:, [0, -1]] = False
        inner = same & (lab != 255)
        assert (decoded.numpy()[inner] == lab[inner]).all()
        pad = lab == 255  # padding: image 0 before normalisation
        assert torch.allclose(denormalize(out)[:, torch.from_numpy(pad)], torch.zeros(1), atol=1e-5)
        checked += inner.sum()
    assert checked > 5000


def test_random_scale_keeps_thin_structures_centred_on_their_label():
    """A 2-px line: after resizing, its label's centre must sit where the image's is. With
    torchvision's default nearest mask kernel the label lands ~0.4 px to the right on average
    (it samples input floor(i·in/out), the image samples pixel centres)."""
    offsets = []
    for s in (0.6, 0.75, 0.9, 1.3, 1.6, 2.0):
        for x0 in range(10, 30, 3):
            label = torch.zeros(24, 48, dtype=torch.uint8)
            label[:, x0:x0 + 2] = 1
            image = torch.zeros(3, 24, 48, dtype=torch.uint8)
            image[0][label == 1] = 255
            size = [round(24 * s), round(48 * s)]
            out, lbl = train_transform(size, [s, s], flip=False, color_jitter=0.0)(image, label)
            assert lbl.shape == tuple(size)
            row_img, row_lbl = denormalize(out)[0, 0], lbl[0].float()
            xs = torch.arange(size[1], dtype=torch.float32)
            offsets.append(float((row_lbl * xs).sum() / row_lbl.sum() - (row_img * xs).sum() / row_img.sum()))
    assert abs(float(np.mean(offsets))) < 0.15, np.mean(offsets)
    assert max(abs(o) for o in offsets) < 0.5


def test_train_transform_pads_label_with_ignore_and_image_with_zero():
    image, label = _encoded_pair(0)  # 48x64, scaled by 0.5 → 24x32, padded to 40x40
    out, lbl = train_transform([40, 40], [0.5, 0.5], flip=False, color_jitter=0.0)(image, label)
    pad = lbl == 255
    assert int(pad.sum()) == 40 * 40 - 24 * 32
    assert torch.allclose(denormalize(out)[:, pad], torch.zeros(1), atol=1e-5)


def test_unscaled_prob_leaves_images_unresampled():
    """data.unscaled_prob: that fraction of training images skips the random scale, so the net
    also sees images as unsmoothed as the test images; the rest are resampled as before."""
    image, label = _encoded_pair(0)  # 48x64
    full = [48, 64]
    ref = eval_transform()(image, label)
    always = train_transform(full, [0.5, 2.0], flip=False, color_jitter=0.0, unscaled_prob=1.0)
    out, lbl = always(image, label)
    assert torch.equal(out, ref[0]) and torch.equal(lbl, ref[1])
    sometimes = train_transform(full, [0.5, 2.0], flip=False, color_jitter=0.0, unscaled_prob=0.5)
    torch.manual_seed(0)
    kept = [torch.equal(sometimes(image, label)[0], ref[0]) for _ in range(40)]
    assert 8 <= sum(kept) <= 32  # ~half; a resampled image never equals the original
    with pytest.raises(GasnasError, match="data.unscaled_prob"):
        load_config(None, ["data.unscaled_prob=1.5"])


def test_train_transform_with_jitter_only_changes_the_image():
    t = train_transform([32, 32], [0.75, 1.5], flip=True, color_jitter=0.4)
    torch.manual_seed(1)
    for seed in range(5):
        image, label = _encoded_pair(seed)
        label[:8, :8] = 255
        _, lbl = t(image, label)
        assert set(lbl.unique().tolist()) <= {0, 1, 2, 255}


def test_hue_jitter_is_its_own_knob():
    def jitter(t):
        return [op for op in t.pipeline.transforms if isinstance(op, v2.ColorJitter)]

    assert jitter(train_transform([8, 8], [1, 1], False, 0.2))[0].hue == (-0.05, 0.05)  # default: color/4
    only_bcs = jitter(train_transform([8, 8], [1, 1], False, 0.2, hue_jitter=0.0))[0]
    assert only_bcs.hue is None and only_bcs.brightness == (0.8, 1.2)
    assert jitter(train_transform([8, 8], [1, 1], False, 0.0, hue_jitter=0.1))[0].brightness is None
    assert not jitter(train_transform([8, 8], [1, 1], False, 0.0))


def test_eval_transform_resizes_label_nearest():
    image, label = _encoded_pair(3)
    out, lbl = eval_transform([24, 32])(image, label)
    assert out.shape == (3, 24, 32) and lbl.shape == (24, 32)
    assert set(lbl.unique().tolist()) <= set(label.unique().tolist())
    out, lbl = eval_transform(None)(image, label)
    assert torch.equal(lbl, label.long())


def test_dataset_train_labels_subset_of_original(tmp_path):
    root = make_camvid(tmp_path / "camvid", {"train": 2})
    cfg = cfg_for("camvid", root, crop_size=[16, 20], scale_range=[0.5, 1.5], color_jitter=0.3)
    ds = build_dataset(cfg, "train", train=True)
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, label = ds[i]
        _check_sample(image, label, (16, 20))
        assert set(label.unique().tolist()) <= {0, 1, 3, 8, 255}


# --------------------------------------------------------------------------- synthetic


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_is_deterministic(tmp_path):
    a = write_synthetic(tmp_path / "a", 3, 2, (24, 32), seed=5, progress=False)
    write_synthetic(tmp_path / "b", 3, 2, (24, 32), seed=5, progress=False)
    write_synthetic(tmp_path / "c", 3, 2, (24, 32), seed=6, progress=False)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a["images"] == 5 and len([k for k in fa if k.endswith(".png")]) == 10
    assert fa == fb
    assert any(fa[k] != fc[k] for k in fa if k.startswith("train/"))
    assert (tmp_path / "a" / "train.txt").read_text().splitlines()[0] == "train/train_00000.png trainannot/train_00000.png"


def test_synthetic_parallel_equals_serial(tmp_path):
    write_synthetic(tmp_path / "s", 4, 0, (24, 32), seed=2, progress=False)
    write_synthetic(tmp_path / "p", 4, 0, (24, 32), seed=2, workers=2, progress=False)
    assert _files(tmp_path / "s") == _files(tmp_path / "p")


def test_synthetic_scenes_have_the_street_classes():
    seen = set()
    for i in range(4):
        img, lbl = render_scene(0, "train", i, (360, 480))
        assert img.shape == (360, 480, 3) and img.dtype == np.uint8 and lbl.shape == (360, 480)
        assert lbl.max() <= 11
        seen |= set(np.unique(lbl).tolist())
    assert {0, 1, 2, 3, 4, 5, 8} <= seen and len(seen) >= 9


def test_synthetic_write_is_atomic(tmp_path, monkeypatch):
    import gasnas.data.synthetic as S

    calls = {"n": 0}
    real = S._render_to

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(task)

    monkeypatch.setattr(S, "_render_to", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "s", 3, 1, (24, 32), seed=0, progress=False)
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind


def test_ensure_synthetic_and_build(tmp_path):
    cfg = cfg_for("synthetic", tmp_path / "syn", synth_n_train=3, synth_n_val=1, synth_size=[24, 32],
                  crop_size=[16, 16])
    root = ensure_synthetic(cfg)
    marker = root / "synth.json"
    mtime = marker.stat().st_mtime_ns
    assert ensure_synthetic(cfg) == root and marker.stat().st_mtime_ns == mtime
    ds = build_dataset(cfg, "train", train=True)
    assert len(ds) == 3
    _check_sample(*ds[0], hw=(16, 16))
    assert len(build_dataset(cfg, "val", train=False)) == 1
    with pytest.raises(GasnasError, match="seed=0 \\(wanted 1\\)"):
        ensure_synthetic(cfg_for("synthetic", root, synth_n_train=3, synth_n_val=1, synth_size=[24, 32], synth_seed=1))
    (tmp_path / "other").mkdir()
    write_png(tmp_path / "other" / "x.png", rand_image(0))
    with pytest.raises(GasnasError, match="not a gasnas synthetic dataset"):
        ensure_synthetic(cfg_for("synthetic", tmp_path / "other"))


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["data", "synth", "--out", str(out), "--n-train", "2", "--n-val", "1", "--size", "24x32", "--no-progress"]
    assert main(args) == 0
    assert "images/s" in capsys.readouterr().out
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(args[:-1] + ["--seed", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gasnas: error:") and "--force" in err and err.count("\n") == 1
    assert main(args[:-1] + ["--seed", "4", "--force", "--no-progress"]) == 0
    assert main(["data", "synth", "--out", str(out), "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err


def test_cli_synth_from_config_overrides(tmp_path, capsys):
    out = tmp_path / "cfg"
    sets = [f"data.root={out}", "data.synth_n_train=2", "data.synth_n_val=0", "data.synth_size=[24,32]"]
    assert main(["data", "synth", "--no-progress"] + [a for s in sets for a in ("--set", s)]) == 0
    assert "2 synthetic images (24x32)" in capsys.readouterr().out
    assert len(list((out / "train").glob("*.png"))) == 2 and not (out / "val").exists()


@pytest.mark.skipif(not CAMVID_REAL.is_dir(), reason="../shared/data/camvid not present")
def test_real_camvid_through_a_dataloader():
    cfg = cfg_for("camvid", CAMVID_REAL, crop_size=[96, 128], max_train_images=4)
    ds = build_dataset(cfg, "train", train=True)
    assert len(ds) == 4 and len(build_dataset(cfg, "val", train=False)) == 101
    torch.manual_seed(0)
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)))
    assert images.shape == (4, 3, 96, 128) and labels.shape == (4, 96, 128)
    assert set(labels.unique().tolist()) <= set(range(11)) | {255}
