"""One config schema for every command: dataclasses, YAML recipes with `_base_`, `--set` overrides.

A recipe is a YAML file whose top-level keys are the sections below. A recipe may name bases,
`_base_: other.yaml` or a list `_base_: [_base_/data/camvid.yaml, _base_/search/20e.yaml]`, and
override only what differs (mmsegmentation style): the bases are merged left to right (a later one
wins), then the recipe's own keys on top. A base path is relative to the file that names it (or a
shipped recipe name). The shipped recipes (`configs/*.yaml`) are compositions of the small bases in
`configs/_base_/` (data, space, latency, search and train sections); `search_schedule` says how many
architecture steps a recipe's search takes. Values are checked against the dataclass field types;
an unknown key names the closest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from gasnas.errors import GasnasError

RECIPE_DIR = Path(__file__).parent / "configs"

DEFAULT_OPS = [
    "none",
    "skip_connect",
    "max_pool_3x3",
    "conv_3x3",
    "sep_conv_3x3",
    "dil_sep_conv_3x3_r2",
    "dil_sep_conv_3x3_r4",
    "dil_sep_conv_3x3_r8",
]


@dataclass
class DataConfig:
    """Which dataset, where, and how images are augmented."""

    format: Literal["synthetic", "camvid", "cityscapes", "folder"] = "synthetic"
    root: str = "data/synthetic"
    num_classes: int = 11
    ignore_index: int = 255
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [360, 480])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    # probability that a training image skips random scaling (not resampled): resampling smooths
    # an image, so without it the net trains only on images smoother than the test images
    unscaled_prob: float = 0.0
    eval_size: list[int] | None = None
    flip: bool = True
    color_jitter: float = 0.2  # brightness, contrast and saturation factors in [1 - x, 1 + x]
    hue_jitter: float | None = None  # hue shift in [-x, x]; None: color_jitter / 4 (hue costs ~4 ms per 176x224 image on CPU)
    workers: int = 0
    max_train_images: int | None = None
    max_val_images: int | None = None
    # `synthetic` only: what `gasnas data synth` writes when root is empty.
    synth_n_train: int = 200
    synth_n_val: int = 50
    synth_size: list[int] = field(default_factory=lambda: [360, 480])
    synth_seed: int = 0


@dataclass
class GGMConfig:
    """GCN-guided module between neighbouring cells' α (reconstructed; see docs/method.md)."""

    mode: Literal["none", "adjacent", "global"] = "adjacent"
    gamma: float = 0.5
    embed_dim: int = 16


@dataclass
class SpaceConfig:
    """Search space: operations, skeleton sizes, cell shape."""

    ops: list[str] = field(default_factory=lambda: list(DEFAULT_OPS))
    # one stride-2 3x3 conv per width; the cells start at 1/2^len (3: the paper's 1/8; 2: 1/4,
    # a gasnas option for small inputs)
    stem_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    stage_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    cells_per_stage: list[int] = field(default_factory=lambda: [4, 4, 4])
    nodes: int = 2
    head_channels: int = 64
    # decoder steps after the 1/8 head (gasnas addition; [] = paper-style head at 1/8): widths of
    # the stem's 1/4 feature, then of its 1/2 feature, fused in; the classifier runs at the finest
    detail_channels: list[int] = field(default_factory=list)
    # how the first (1/4) step fuses (the 1/2 step is always separable): "conv" a dense 3x3, "sep" a
    # depthwise-separable one (~7x fewer FLOPs there; the demo's choice)
    detail_fuse: Literal["conv", "sep"] = "conv"
    # pad the input (edge-replicate, right/bottom) to a multiple of the net's stride and crop the
    # logits back, so every stride-2 step halves an even size at any input size, as in training
    # on crops that are multiples of it (gasnas addition; docs/method.md "Input padding")
    pad_to_stride: bool = True
    aux_heads: bool = False
    # `independent` (GAS): every cell its own α. `shared` (DARTS, for the paper's cell-sharing
    # ablation): one α for all normal cells and one for all reduction cells; the GGM then runs on
    # the graph of the two cell types (α'_reduction from α_normal and α_reduction; α'_normal = α_normal)
    alpha_sharing: Literal["independent", "shared"] = "independent"
    ggm: GGMConfig = field(default_factory=GGMConfig)


@dataclass
class LatencyConfig:
    """How the latency lookup table is measured and how latency enters the search loss."""

    input_size: list[int] = field(default_factory=lambda: [360, 480])
    device: str = "cpu"
    backend: Literal["torch", "onnxruntime"] = "torch"
    threads: int | None = None
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    warmup: int = 3
    repeats: int = 10
    lut: str | None = None
    measure_missing: bool = True
    allow_foreign_lut: bool = False
    loss: Literal["linear", "log", "target"] = "linear"
    weight: float = 0.002
    target_ms: float | None = None
    # A budget relative to a peer instead of milliseconds: T = target_ratio x the latency of
    # `reference_peer` (gasnas.models.PEERS, random weights) measured by the search on this machine,
    # beside every derived net it times (latency/isolated.py), so T and the derived nets share a
    # scale whatever the machine's speed. Implies loss `target`; excludes target_ms.
    target_ratio: float | None = None
    reference_peer: str = "lraspp_mobilenet_v3_large"
    target_weight: float = 1.0  # initial λ in `target` mode: the hinge λ·max(0, E/T - 1) is relative, not in ms
    # `target` mode: what the budget T bounds. `measured`: the derived net as measured — the
    # hinge compares E[Lat] with T·r, r = E[Lat] / the derived net's latency measured at the
    # last epoch end (search.measure_derived; the LUT prediction where nothing is measured).
    # E[Lat] of the softmax mixture exceeds the derived net's latency (45-59 vs 28-31 ms in a
    # CamVid search), so a hinge on E[Lat] alone keeps pulling toward free ops long after the
    # derived net is under budget; and the table predicted 15-20% above what the demo's
    # derived nets measured, so a budget in table units landed 17-18% under T.
    # `derived`: r uses the LUT-predicted latency of the derived net. `expected`: E[Lat] itself.
    target_basis: Literal["measured", "derived", "expected"] = "measured"
    log_beta: float = 0.6
    # `target` mode: after every architecture step λ ← λ·exp(lambda_lr·clip(d/T − 1, ±1)), d the derived
    # net's LUT-predicted latency times its last measured/predicted ratio (latency/budget.py)
    lambda_lr: float = 0.05
    calibrate_samples: int = 16  # derived nets measured to calibrate a new table (0: raw table sum)
    # The op weights the search's E[Lat] is computed from. `mixture`: softmax(α') over every op
    # (plus the drawn path under gumbel). `derivable`: per edge the softmax over the ops a derived
    # net keeps on any edge (not `none`, and not `skip_connect` when search.max_skip_per_cell caps
    # it), renormalised: `none` and skip cost 0 in the mixture, but derivation never keeps `none`
    # and replaces capped skips by the edge's next op, so under `mixture` the latency pull drains
    # weight into them while the derived net stays where it was (engine/relaxation.py).
    expectation: Literal["mixture", "derivable"] = "mixture"


@dataclass
class SearchConfig:
    """Bilevel first-order search (DARTS-style) with the GGM and the latency term."""

    epochs: int = 20
    warmup_epochs: int = 5
    batch_size: int = 8
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    # α + GGM learning rate at the last search step (cosine from a_lr, per step, over the search
    # epochs; None: constant a_lr). A decaying rate lets α settle once the ranking is made.
    a_lr_min: float | None = None
    a_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    a_weight_decay: float = 1e-3
    # The GGM's learning rate as a fraction of α's (its own Adam group): one step of W moves every
    # α' by up to Σ_j |x_j|·lr over the standardised features, many times what α itself moves, so at
    # 1.0 the GGM sharpens whatever α prefers first (on CamVid: α' spread 10 over raw α's 0.6)
    ggm_lr_scale: float = 1.0
    measure_derived: bool = True
    # Time the derived net in a fresh subprocess beside a reference net and report it on the
    # calm-phase scale (latency/isolated.py): inside the search process the same net measured
    # 16-56 ms across epochs, and a shared CPU's speed can vary ~1.4x in phases. `measure_rounds`
    # alternating rounds of each net.
    measure_isolated: bool = True
    measure_rounds: int = 3
    # The budget's calibration (measured / LUT-predicted latency of the derived net) is the median
    # over the last this-many distinct derived nets (latency/budget.py): one measurement moves
    # 3-7% between epochs, and the budget fit follows every move. 1: the last net's alone
    calibration_window: int = 8
    max_steps_per_epoch: int | None = None
    ohem: bool = False  # OHEM cross-entropy in the search loss (uses train.ohem_thresh / ohem_min_kept)
    # Search may see smaller images than training (e.g. half resolution); None = the data.* value.
    crop_size: list[int] | None = None
    eval_size: list[int] | None = None
    # Supernet memory vs time (space/fused.py, Supernet.set_recompute): in the cells of the first
    # N stages, the mixed ops recompute their separable branches' pointwise convs in backward
    # instead of storing their outputs (4 fewer stored feature maps per edge, one more pointwise
    # conv per branch in backward). 0: store all (fastest), 3: every stage of the default skeleton.
    recompute_stages: int = 3
    # How an edge's op choice is relaxed (engine/relaxation.py). `softmax`: every op runs, weighted
    # by softmax(α') (DARTS, the reference). `gumbel`: one op per edge is drawn each step by hard
    # Gumbel-softmax with a straight-through gradient (GDAS / FBNet); only the drawn op runs, so a
    # step costs about one derived net with every edge kept. Temperature: tau_max at the first
    # search step, linearly to tau_min at the last (warm-up epochs sample at tau_max).
    relaxation: Literal["softmax", "gumbel"] = "softmax"
    # `gumbel`: the architecture step's gradient. `sampled`: the drawn op's scale only (GDAS;
    # it favours whichever op is drawn most, whatever its quality); `all_ops`: every op of an
    # edge runs without a graph and its weight gets <dL/dy, op(x)> on the sampled net
    # (ProxylessNAS), for one no-grad forward of every op; `pair`: a second op per edge is drawn
    # (Gumbel top-2: without replacement) and runs without a graph, and the softmax over the two
    # ops' α' compares them (ProxylessNAS's two-path update), for one extra op per edge
    path_gradient: Literal["sampled", "all_ops", "pair"] = "all_ops"
    # `gumbel`: which path the WEIGHT step trains. `alpha`: drawn from softmax(α') (GDAS), so the
    # likelier ops are trained more; `uniform`: every op of an edge equally often (SPOS / FairNAS),
    # so an op's α does not grow from being trained more
    weight_path: Literal["alpha", "uniform"] = "alpha"
    tau_max: float = 5.0
    tau_min: float = 0.5
    # Guards against the latency pull (and skips) deciding the genotype before CE does:
    latency_warmin_epochs: int = 1  # search epochs after the warm-up with λ = 0
    latency_ramp_epochs: int = 2    # then λ rises linearly to its full value over this many epochs
    balance_latency: bool = True    # latency gradient per stage scaled by that stage's CE gradient (mean 1)
    skip_dropout: float = 0.0       # P-DARTS: each edge's skip_connect dropped with this probability per step
    max_skip_per_cell: int | None = 2  # P-DARTS: derivation keeps at most this many skip edges per cell
    # With a budget (latency.loss target): each epoch's genotype is the argmax net with the least
    # preferred op swaps that bring its calibrated prediction within T (latency/budget.py
    # fit_to_budget), so a search whose α' settled before λ won still ships a net in budget
    derive_within_budget: bool = False
    # ... only when the argmax net's calibrated prediction exceeds T by more than this fraction (it is
    # then fitted to T): a dead band against churn where the argmax net hovers at T and the
    # calibration moves a few % between epochs (on CamVid 0-7 swaps an epoch near the end)
    budget_slack: float = 0.0
    # Mixed precision of the weight and architecture steps' forward + loss and of the supernet's
    # evaluation (engine/amp.py): none = fp32; bf16 / fp16 = torch.autocast (fp16 with a
    # GradScaler per optimizer). α, the GGM, the latency term and every optimizer stay fp32.
    amp: Literal["none", "bf16", "fp16"] = "none"


@dataclass
class TrainConfig:
    """Training the derived network from scratch."""

    epochs: int = 100
    batch_size: int = 8
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw: decoupled weight decay, converges in fewer steps
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    channels_last: bool = True  # NHWC training (same function, other rounding; faster on CPU)
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    # OHEM: keep pixels whose true-class probability is below ohem_thresh (at least ohem_min_kept
    # of them); ohem_thresh >= 1 keeps every pixel: plain (class-weighted) cross-entropy
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 10000
    # Class-balanced loss: weights from the training split's pixel counts (engine/losses.py
    # class_weights): enet = 1/ln(1.02 + p), median_freq = median(p)/p; none = unweighted.
    class_weighting: Literal["none", "enet", "median_freq"] = "none"
    aux_weight: float = 0.4
    dice_weight: float = 0.0  # > 0: add this times a soft-Dice term (engine/losses.py SoftDice) to the loss
    # Exponential moving average of the weights (engine/train.py WeightEMA; timm's ModelEmaV2):
    # 0 = off; else the decay per step, ramped as min(decay, (1 + t)/(10 + t)). With it on, the
    # EMA weights are the ones evaluated and saved as "model"; the raw ones only resume.
    ema_decay: float = 0.0
    # Post-hoc logit adjustment (needs class_weighting): after the last epoch, fold −τ·log w_c into
    # the classifier's bias of best.pt, τ in {0, 0.25, 0.5, 0.75, 1} chosen by mIoU on every
    # logit_adjust_every-th training image at native scale (never on the val split)
    logit_adjust: bool = False
    logit_adjust_every: int = 6
    eval_every: int = 5
    max_steps_per_epoch: int | None = None
    pretrained: str | None = None
    # Mixed precision of the training step's forward + loss and of evaluation (engine/amp.py):
    # none = fp32; bf16 / fp16 = torch.autocast (fp16 with a GradScaler). Weights stay fp32.
    amp: Literal["none", "bf16", "fp16"] = "none"
    # torch.compile (inductor) around the training forward + backward; evaluation and the saved
    # weights stay those of the eager module. The first steps pay the compilation.
    compile: bool = False


@dataclass
class BenchConfig:
    """Speed measurement of a derived net (and of the torchvision peers)."""

    input_size: list[int] = field(default_factory=lambda: [1024, 2048])
    backend: Literal["torch", "compile", "onnxruntime", "tensorrt"] = "torch"
    device: str = "cpu"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    threads: int | None = None
    warmup: int = 3
    runs: int = 10


@dataclass
class Config:
    """Everything one run needs. `gasnas config show RECIPE` prints it resolved."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads for search/train/eval (None: torch's default)
    deterministic: bool = False
    # TF32 for fp32 matmuls and cuDNN convs on CUDA (torch.backends.cuda.matmul.allow_tf32 and
    # torch.backends.cudnn.allow_tf32, both set at start-up). Off by default: fp32 means fp32,
    # and the fused mixed op's torch.mm and the plain path's cuDNN convs round alike (torch's
    # own defaults differ: matmul off, cuDNN on). No effect on CPU.
    tf32: bool = False
    # mirror metrics.jsonl (every scalar) and the per-epoch figures to RUN/tb for TensorBoard;
    # needs the optional tensorboard package: pip install -e ".[tb]"
    tensorboard: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- type checking


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_describe(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked (and mildly converted, int→float) against the annotation `tp`."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise GasnasError(f"config key '{key}': {value!r} is not {_describe(tp)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except GasnasError:
                continue
        raise GasnasError(f"config key '{key}': {value!r} is not {_describe(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise GasnasError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif is_dataclass(tp):
        if isinstance(value, dict):
            return build_dataclass(tp, value, key)
    else:  # pragma: no cover - schema uses only the types above
        raise TypeError(f"unsupported config type {tp}")
    raise GasnasError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(options)})"


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """A config dataclass from a plain dict, every key checked against the schema (unknown keys
    get a "did you mean"; `prefix` names the section in errors). Genotype files use it for
    their space section."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise GasnasError(f"unknown config key '{full}'{_closest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    obj = cls(**kwargs)
    return obj


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- recipes


def resolve_recipe(name: str | Path) -> Path:
    """A path, or a recipe name shipped in gasnas/configs (`demo`, `camvid`, `cityscapes`)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (RECIPE_DIR / f"{name}.yaml", RECIPE_DIR / str(name)):
        if cand.is_file():
            return cand
    # top level only: the composable pieces under configs/_base_/ are not recipes
    shipped = sorted(x.stem for x in RECIPE_DIR.glob("*.yaml") if not x.stem.startswith("_"))
    raise GasnasError(f"{name}: no such config file or recipe (recipes: {', '.join(shipped)})")


def _load_yaml_dict(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise GasnasError(f"{path}: _base_ cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise GasnasError(f"{path}:{where} invalid YAML") from None
    if not isinstance(data, dict):
        raise GasnasError(f"{path}: a config file must be a mapping of sections")
    base = data.pop("_base_", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise GasnasError(f"{path}: _base_ must be a file name or a list of file names, got {base!r}")
    merged: dict[str, Any] = {}
    for name in bases:  # left to right: a later base overrides an earlier one
        base_path = (path.parent / name) if not Path(name).is_absolute() else Path(name)
        if not base_path.is_file():
            base_path = resolve_recipe(name)
        merged = _merge(merged, _load_yaml_dict(base_path, seen + (path,)))
    return _merge(merged, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` → (['a','b'], yaml-parsed c). YAML parsing, never eval."""
    if "=" not in item:
        raise GasnasError(f"--set {item!r}: expected KEY=VALUE, e.g. search.epochs=3")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            node[part] = dict(child)
            node = node[part]
        node[path[-1]] = value
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    return build_dataclass(Config, data)


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve recipe (+ its `_base_` chain) + overrides into one validated Config."""
    data: dict[str, Any] = _load_yaml_dict(resolve_recipe(recipe)) if recipe else {}
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that need more than one field's type."""

    def pair(key: str, value: list[Any]) -> None:
        if len(value) != 2 or min(value) <= 0:
            raise GasnasError(f"config key '{key}': expected [H, W] with positive sizes, got {value}")

    pair("data.crop_size", cfg.data.crop_size)
    pair("data.synth_size", cfg.data.synth_size)
    pair("latency.input_size", cfg.latency.input_size)
    pair("bench.input_size", cfg.bench.input_size)
    for key, value in (("data.eval_size", cfg.data.eval_size), ("search.crop_size", cfg.search.crop_size),
                       ("search.eval_size", cfg.search.eval_size)):
        if value is not None:
            pair(key, value)
    if not 0.0 <= cfg.data.unscaled_prob <= 1.0:
        raise GasnasError(f"config key 'data.unscaled_prob': expected a probability in [0, 1], "
                          f"got {cfg.data.unscaled_prob}")
    lo, hi = (cfg.data.scale_range + [0, 0])[:2]
    if len(cfg.data.scale_range) != 2 or not 0 < lo <= hi:
        raise GasnasError(f"config key 'data.scale_range': expected [min, max], got {cfg.data.scale_range}")
    sp = cfg.space
    if not 1 <= len(sp.stem_channels) <= 3:
        raise GasnasError("config key 'space.stem_channels': expected 1-3 widths (one stride-2 conv each; "
                          f"the cells start at 1/2^len), got {sp.stem_channels}")
    if len(sp.stage_channels) != len(sp.cells_per_stage) or not sp.stage_channels:
        raise GasnasError("config key 'space.cells_per_stage': needs one entry per space.stage_channels")
    if len(sp.detail_channels) >= len(sp.stem_channels) or any(c < 1 for c in sp.detail_channels):
        raise GasnasError("config key 'space.detail_channels': at most one positive width per stem conv "
                          f"but the last ({len(sp.stem_channels) - 1} here), got {sp.detail_channels}")
    if sp.nodes < 1:
        raise GasnasError("config key 'space.nodes': must be >= 1")
    from gasnas.space.ops import OPS

    for i, op in enumerate(sp.ops):
        if op not in OPS:
            raise GasnasError(f"config key 'space.ops[{i}]': unknown op '{op}'{_closest(op, sorted(OPS))}")
    if len([o for o in sp.ops if o != "none"]) == 0:
        raise GasnasError("config key 'space.ops': needs at least one op other than 'none'")
    lc = cfg.latency
    if lc.target_ratio is not None:
        if not lc.target_ratio > 0:
            raise GasnasError(f"config key 'latency.target_ratio': expected a positive fraction, got {lc.target_ratio}")
        if lc.target_ms is not None:
            raise GasnasError("config key 'latency.target_ratio': set either it or latency.target_ms, not both")
        if lc.loss != "target":
            raise GasnasError("config key 'latency.target_ratio': needs latency.loss 'target' (or use --target-ratio)")
        from gasnas.models import PEERS

        if lc.reference_peer not in PEERS:
            raise GasnasError(f"config key 'latency.reference_peer': unknown peer '{lc.reference_peer}'"
                              f"{_closest(lc.reference_peer, list(PEERS))}")
    elif lc.loss == "target" and lc.target_ms is None:
        raise GasnasError("config key 'latency.target_ms': required when latency.loss is 'target' "
                          "(or a budget relative to a peer: latency.target_ratio)")
    if cfg.search.warmup_epochs > cfg.search.epochs:
        raise GasnasError("config key 'search.warmup_epochs': larger than search.epochs")
    sc = cfg.search
    if not 0 < sc.tau_min <= sc.tau_max:
        raise GasnasError(f"config key 'search.tau_min': expected 0 < tau_min <= tau_max ({sc.tau_max}), got {sc.tau_min}")
    if not sc.budget_slack >= 0:
        raise GasnasError(f"config key 'search.budget_slack': expected a fraction >= 0, got {sc.budget_slack}")
    if sc.calibration_window < 1:
        raise GasnasError(f"config key 'search.calibration_window': expected >= 1 derived nets, got {sc.calibration_window}")
    if not sc.ggm_lr_scale > 0:
        raise GasnasError(f"config key 'search.ggm_lr_scale': expected a positive number, got {sc.ggm_lr_scale}")
    if not 0.0 <= sc.skip_dropout < 1.0:
        raise GasnasError(f"config key 'search.skip_dropout': expected a probability in [0, 1), got {sc.skip_dropout}")
    for key in ("latency_warmin_epochs", "latency_ramp_epochs"):
        if getattr(sc, key) < 0:
            raise GasnasError(f"config key 'search.{key}': must be >= 0, got {getattr(sc, key)}")
    if sc.max_skip_per_cell is not None and sc.max_skip_per_cell < 0:
        raise GasnasError(f"config key 'search.max_skip_per_cell': must be >= 0 or null, got {sc.max_skip_per_cell}")
    if cfg.train.dice_weight < 0:
        raise GasnasError(f"config key 'train.dice_weight': must be >= 0, got {cfg.train.dice_weight}")
    if cfg.train.logit_adjust and cfg.train.class_weighting == "none":
        raise GasnasError("config key 'train.logit_adjust': needs train.class_weighting (enet or "
                          "median_freq): it undoes part of the class weights' shift")
    if cfg.train.logit_adjust_every < 1:
        raise GasnasError(f"config key 'train.logit_adjust_every': must be >= 1, got {cfg.train.logit_adjust_every}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise GasnasError(f"config key 'train.ema_decay': expected 0 (off) or a decay in (0, 1), "
                          f"got {cfg.train.ema_decay}")


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


def search_data_config(cfg: Config) -> DataConfig:
    """The data section as the search sees it (search.crop_size / eval_size applied)."""
    return dataclasses.replace(cfg.data, crop_size=cfg.search.crop_size or cfg.data.crop_size,
                               eval_size=cfg.search.eval_size or cfg.data.eval_size)


def parse_scales(text: str) -> list[float]:
    """`0.75,1,1.25` → [0.75, 1.0, 1.25] (--scales); anything else is a one-line error."""
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GasnasError(f"--scales {text!r}: expected numbers separated by commas, e.g. 0.75,1,1.25") from None
    if not scales or min(scales) <= 0:
        raise GasnasError(f"--scales {text!r}: expected positive numbers, e.g. 0.75,1,1.25")
    return scales


def parse_size(text: str | list[int] | tuple[int, int], name: str = "--input") -> list[int]:
    """`360x480` (or [360, 480] from a config) → [360, 480] (height x width); anything else is
    a one-line error naming `name`."""
    if isinstance(text, (list, tuple)):
        if len(text) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in text):
            return [int(text[0]), int(text[1])]
        raise GasnasError(f"{name} {list(text)!r}: expected [H, W] with positive integers")
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise GasnasError(f"{name} {text!r}: expected HxW with positive integers, e.g. 360x480")
    return [h, w]


def _search_steps_per_epoch(n_train: int, batch_size: int, cap: int | None) -> int:
    """Steps of one search epoch, as the search runs them (engine/search.py with
    engine/sampling.py: split_indices halves the n training images into n // 2 and n - n // 2,
    EpochBatches drops each half's incomplete last batch, the epoch is the shorter of the two,
    then capped at max(1, search.max_steps_per_epoch)). Pure arithmetic: no engine import."""
    half = n_train // 2
    steps = min(half // batch_size, (n_train - half) // batch_size)
    return steps if cap is None else min(steps, max(1, cap))


def search_schedule(cfg: Config, n_train: int) -> dict[str, int]:
    """How long `cfg`'s search is on n_train training images: steps per epoch, epochs with
    architecture steps (search.epochs - search.warmup_epochs) and their product, the number of
    architecture (α + GGM) updates."""
    sc = cfg.search
    steps = _search_steps_per_epoch(n_train, sc.batch_size, sc.max_steps_per_epoch)
    epochs = max(0, sc.epochs - sc.warmup_epochs)
    return {"steps_per_epoch": steps, "search_epochs": epochs, "arch_steps": steps * epochs}


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """The options every config-driven command shares (`--config`, `--set`); here, with the
    schema, so that command modules need not import the CLI."""
    p.add_argument("--config", "-c", required=required, default=None,
                   help="recipe name (demo, camvid, cityscapes) or path to a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.epochs=3 (repeatable)")
