"""Shipped recipes say what they run: composable `_base_` lists, a search-length header that
matches the resolved config, and no demo shortcuts leaking into the CamVid recipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gasnas.cli import main
from gasnas.config import RECIPE_DIR, load_config, search_schedule
from gasnas.errors import GasnasError

RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
BASES = sorted(RECIPE_DIR.glob("_base_/**/*.yaml"))

# training-set sizes per data.format (synthetic: data.synth_n_train)
N_TRAIN = {"camvid": 367, "cityscapes": 2975}  # SegNet split; Cityscapes fine train

HEADER = re.compile(
    r"# search: at least (?P<n>\d+) architecture steps \((?P<t>\d+) training images / 2 halves"
    r" / batch (?P<b>\d+) = (?P<s>\d+) steps per epoch x (?P<e>\d+) search epochs"
    r"(?:, capped at (?P<c>\d+) steps per epoch)?\)")


def _leading_comments(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(line)
    return out


def _n_train(cfg) -> int:
    if cfg.data.format == "synthetic":
        return cfg.data.synth_n_train
    if cfg.data.format not in N_TRAIN:
        pytest.fail(f"no training-set size known for data.format {cfg.data.format!r}")
    return N_TRAIN[cfg.data.format]


def _rel(path: Path) -> str:
    return path.relative_to(RECIPE_DIR).as_posix()


def test_recipes_and_bases_are_found() -> None:
    assert {p.stem for p in RECIPES} >= {"demo", "camvid", "cityscapes"}
    assert len(BASES) >= 5
    assert not any(p.stem.startswith("_") for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipe_header_states_its_search_length(path: Path) -> None:
    cfg = load_config(path)
    matches = [m for line in _leading_comments(path) if (m := HEADER.fullmatch(line))]
    assert len(matches) == 1, f"{path.name}: expected one '# search: at least N architecture steps (...)' header line"
    h = {k: (int(v) if v is not None else None) for k, v in matches[0].groupdict().items()}
    n_train = _n_train(cfg)
    assert h["t"] == n_train and h["b"] == cfg.search.batch_size
    # the header's own arithmetic: floor(T / 2 / B) steps, capped, times the search epochs
    assert h["s"] == h["t"] // 2 // h["b"]
    per_epoch = h["s"] if h["c"] is None else min(h["s"], h["c"])
    assert h["n"] == per_epoch * h["e"]
    assert (h["c"] is None) == (cfg.search.max_steps_per_epoch is None)
    sched = search_schedule(cfg, n_train)
    assert sched["arch_steps"] >= h["n"], (path.name, sched)


def test_search_schedule_values() -> None:
    capped = load_config(None, ["search.epochs=6", "search.warmup_epochs=2", "search.max_steps_per_epoch=10"])
    assert search_schedule(capped, 480) == {"steps_per_epoch": 10, "search_epochs": 4, "arch_steps": 40}
    full = load_config(None, ["search.epochs=30", "search.warmup_epochs=5"])
    assert search_schedule(full, 367) == {"steps_per_epoch": 22, "search_epochs": 25, "arch_steps": 550}
    assert search_schedule(load_config("cityscapes"), 2975) == {
        "steps_per_epoch": 185, "search_epochs": 30, "arch_steps": 5550}
    # a cap below 1 still runs one step per epoch, as the search does
    cfg = load_config(None, ["search.max_steps_per_epoch=0", "search.epochs=3", "search.warmup_epochs=1"])
    assert search_schedule(cfg, 100)["arch_steps"] == 2


@pytest.mark.parametrize(("n", "batch"), [(367, 8), (480, 8), (2975, 8), (17, 3), (9, 2), (3, 4)])
def test_search_schedule_rounds_like_the_engine(n: int, batch: int) -> None:
    from gasnas.engine.sampling import EpochBatches, split_indices

    w_idx, a_idx = split_indices(n, 0)
    engine = min(EpochBatches(w_idx, batch, 0).batches_per_epoch,
                 EpochBatches(a_idx, batch, 0).batches_per_epoch)
    cfg = load_config(None, [f"search.batch_size={batch}"])
    assert search_schedule(cfg, n)["steps_per_epoch"] == engine


def test_camvid_does_not_inherit_demo_search_shortcuts() -> None:
    camvid = load_config("camvid")
    assert camvid.search.max_steps_per_epoch is None
    text = {name: (RECIPE_DIR / f"{name}.yaml").read_text() for name in ("camvid", "demo")}
    assert "demo.yaml" not in text["camvid"]
    demo_bases = {ln.strip() for ln in text["demo"].splitlines() if ln.strip().startswith("- _base_/")}
    camvid_bases = {ln.strip() for ln in text["camvid"].splitlines() if ln.strip().startswith("- _base_/")}
    assert camvid_bases and not demo_bases & camvid_bases  # no shared piece, so nothing leaks across


def test_base_list_merges_left_to_right(tmp_path: Path) -> None:
    bases = tmp_path / "bases"
    bases.mkdir()
    (bases / "c.yaml").write_text("data:\n  num_classes: 5\n  root: from-c\n")
    (bases / "a.yaml").write_text("name: a\nsearch:\n  epochs: 9\n  warmup_epochs: 1\n  batch_size: 3\n")
    # b names c relative to itself (bases/), not to the recipe that names b
    (bases / "b.yaml").write_text("_base_: c.yaml\nsearch:\n  epochs: 7\n  batch_size: 5\n"
                                  "data:\n  root: from-b\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("_base_: [bases/a.yaml, bases/b.yaml]\nsearch:\n  epochs: 2\n")
    cfg = load_config(recipe)
    assert cfg.name == "a"                                      # only a sets it
    assert (cfg.search.warmup_epochs, cfg.search.batch_size) == (1, 5)  # b overrides a
    assert cfg.search.epochs == 2                               # the recipe overrides both
    assert (cfg.data.num_classes, cfg.data.root) == (5, "from-b")  # b over its own base c
    # the other order: a wins over b
    recipe.write_text("_base_:\n  - bases/b.yaml\n  - bases/a.yaml\n")
    cfg = load_config(recipe)
    assert (cfg.search.epochs, cfg.search.batch_size) == (9, 3)


def test_base_cycle_in_a_list_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.yaml").write_text("_base_: [c.yaml, b.yaml]\n")
    (tmp_path / "b.yaml").write_text("_base_: [a.yaml]\n")
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    with pytest.raises(GasnasError, match="_base_ cycle") as err:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(err.value)
    assert main(["config", "show", str(tmp_path / "a.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "_base_ cycle" in lines[0]


def test_shared_base_is_not_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "common.yaml").write_text("seed: 3\n")
    (tmp_path / "x.yaml").write_text("_base_: common.yaml\nname: x\n")
    (tmp_path / "y.yaml").write_text("_base_: common.yaml\nout_dir: y\n")
    (tmp_path / "r.yaml").write_text("_base_: [x.yaml, y.yaml]\n")
    cfg = load_config(tmp_path / "r.yaml")
    assert (cfg.seed, cfg.name, cfg.out_dir) == (3, "x", "y")


@pytest.mark.parametrize("base", ["3", "[a.yaml, 4]", "{a: b}"])
def test_bad_base_value_is_a_one_line_error(tmp_path: Path, base: str) -> None:
    (tmp_path / "r.yaml").write_text(f"_base_: {base}\n")
    with pytest.raises(GasnasError, match="_base_ must be a file name or a list") as err:
        load_config(tmp_path / "r.yaml")
    assert "\n" not in str(err.value)


def test_recipe_list_in_errors_omits_bases() -> None:
    with pytest.raises(GasnasError) as err:
        load_config("no_such_recipe")
    listed = str(err.value).split("(recipes: ", 1)[1].rstrip(")").split(", ")
    assert listed == sorted(p.stem for p in RECIPES)


@pytest.mark.parametrize("path", BASES, ids=_rel)
def test_base_file_loads_alone_and_says_what_it_is(path: Path) -> None:
    load_config(path)
    assert 1 <= len(_leading_comments(path)) <= 3, f"{_rel(path)}: start with a 1-3 line comment"
