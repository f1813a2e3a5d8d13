"""Config schema: recipes, _base_ inheritance, --set overrides, one-line errors."""

from __future__ import annotations

import pytest

from gasnas.cli import main
from gasnas.config import RECIPE_DIR, Config, load_config, parse_size
from gasnas.errors import GasnasError


def test_defaults_validate() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.space.ggm.mode == "adjacent"
    assert sum(cfg.space.cells_per_stage) + len(cfg.space.cells_per_stage) - 1 == 14


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["search.epochs=6", "space.ggm.mode=none", "latency.weight=1",
                             "data.crop_size=[64, 96]", "latency.lut=null"])
    assert cfg.search.epochs == 6 and cfg.space.ggm.mode == "none"
    assert cfg.latency.weight == 1.0 and isinstance(cfg.latency.weight, float)
    assert cfg.data.crop_size == [64, 96] and cfg.latency.lut is None


@pytest.mark.parametrize(("override", "message"), [
    ("search.epoch=3", "unknown config key 'search.epoch' (did you mean 'epochs'?)"),
    ("serch.epochs=3", "unknown config key 'serch' (did you mean 'search'?)"),
    ("search.epochs=three", "config key 'search.epochs': expected int, got 'three'"),
    ("space.ggm.mode=star", "config key 'space.ggm.mode': 'star' is not one of"),
    ("space.ops=[conv_3x3, conv_5x5]", "config key 'space.ops[1]': unknown op 'conv_5x5'"),
    ("data.crop_size=[64]", "config key 'data.crop_size'"),
    ("latency.loss=target", "config key 'latency.target_ms': required"),
    ("search.epochs", "expected KEY=VALUE"),
    ("latency.target_ratio=0.8", "config key 'latency.target_ratio': needs latency.loss 'target'"),
    ("search.budget_slack=-0.1", "config key 'search.budget_slack': expected a fraction >= 0"),
    ("search.calibration_window=0", "config key 'search.calibration_window': expected >= 1 derived nets"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(GasnasError, match=None) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("overrides", "message"), [
    (["latency.target_ratio=0"], "config key 'latency.target_ratio': expected a positive fraction"),
    (["latency.target_ratio=0.8", "latency.target_ms=30"], "set either it or latency.target_ms, not both"),
    (["latency.target_ratio=0.8", "latency.reference_peer=lraspp"], "config key 'latency.reference_peer': unknown peer 'lraspp' (valid: lraspp_mobilenet_v3_large"),
])
def test_a_budget_relative_to_a_peer_is_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(GasnasError) as err:
        load_config(None, ["latency.loss=target", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)
    cfg = load_config(None, ["latency.loss=target", "latency.target_ratio=0.8"])
    assert cfg.latency.target_ratio == 0.8 and cfg.latency.target_ms is None


def test_base_inheritance(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("search:\n  epochs: 9\n  warmup_epochs: 1\n  batch_size: 3\nname: base\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nsearch:\n  epochs: 2\n")
    cfg = load_config(child)
    assert (cfg.search.epochs, cfg.search.batch_size, cfg.name) == (2, 3, "base")


def test_shipped_recipes_load() -> None:
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert {"demo", "camvid", "cityscapes"} <= set(names)
    for name in names:
        load_config(name)


def test_config_show_cli(capsys) -> None:
    assert main(["config", "show", "demo", "--set", "search.epochs=6"]) == 0
    assert "epochs: 6" in capsys.readouterr().out
    assert main(["config", "show", "demo", "--set", "search.epoch=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.epoch" in err[0]
    assert main(["config", "show", "no_such_recipe"]) == 2


def test_parse_size() -> None:
    assert parse_size("360x480") == [360, 480]
    with pytest.raises(GasnasError, match="--input '10x'"):
        parse_size("10x")


@pytest.mark.parametrize("setting", ["train.ema_decay=1.0", "train.ema_decay=-0.1", "train.dice_weight=-1"])
def test_training_option_out_of_range_is_a_one_line_error(setting, capsys) -> None:
    assert main(["config", "show", "demo", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and setting.split("=")[0] in err[0]
