"""Training the derived network from scratch (optionally from user-supplied weights).

SGD (train.lr, momentum, weight decay; or `train.optimizer: adamw`) with a poly schedule lr·(1 − it/total)^power updated
every iteration; OHEM cross-entropy (train.ohem_thresh, train.ohem_min_kept; engine/losses.py);
auxiliary heads when `space.aux_heads` is on (loss + train.aux_weight · Σ aux losses); an
optional soft-Dice term (train.dice_weight); an optional EMA of the weights (train.ema_decay,
`WeightEMA`), which is then what gets evaluated and saved as "model" (last.pt also keeps the raw
weights as "train_model" to resume);
evaluation on the val split every `train.eval_every` epochs and after the last one; `best.pt`
(highest val mIoU) and `last.pt` (also resumable, also every `--ckpt-every-steps` steps).

`gasnas train --peer NAME` trains a torchvision peer (models.py PEERS, no pretrained
weights) with the very same loop, data, schedule and loss: the fair baseline for benchmarks.

Both checkpoints keep {"genotype" (or "peer"), "model", "meta"} at the top level
(`gasnas.space.derived.checkpoint_payload`), so `load_derived_checkpoint`, `gasnas eval`,
`bench`, `export` and `predict` read either. meta: class_names, palette, mean, std, dataset,
data_root, epoch, miou, iou per class, config (the resolved run config), genotype source.

Run folder: `cfg.run_dir / "train"` unless given: config.yaml, genotype.json (as trained),
metrics.jsonl, plots/, best.pt, last.pt.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gasnas.config import Config
from gasnas.data import MEAN, STD, build_dataset, class_names, denormalize, palette
from gasnas.engine import checkpoint as ckpt_io
from gasnas.engine import distributed as D
from gasnas.engine.amp import Precision
from gasnas.engine.evaluate import evaluate, logit_adjust_checkpoint, predict
from gasnas.engine.losses import SoftDice, build_criterion, class_weights
from gasnas.engine.metrics import nan_to_none
from gasnas.engine.runtime import (
    EpochLoop,
    MetricsLog,
    PlotThrottle,
    Runtime,
    StopSignal,
    check_finite,
    log,
    progress,
    safe_plot,
    setup,
)
from gasnas.engine.sampling import EpochBatches, batch_loader, eval_loader
from gasnas.errors import GasnasError
from gasnas.fileio import torch_load
from gasnas.models import PEERS, build_peer
from gasnas.space.derived import DerivedNet, checkpoint_payload
from gasnas.space.genotype import Genotype, resolve_genotype

TRAIN_STREAM = 3
LAST, BEST = "last.pt", "best.pt"


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    return base_lr * (1.0 - min(iteration, total) / max(1, total)) ** power


def make_optimizer(model: nn.Module, tc: Any) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's recipe) or AdamW (short CPU schedules); with AdamW, BN and
    bias parameters get no weight decay."""
    if tc.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # one fused kernel over all tensors (CPU since torch 2.4): ~10% of a small net's step otherwise
        return torch.optim.AdamW(groups, lr=tc.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=tc.lr)


class WeightEMA:
    """Exponential moving average of a model's weights and buffers (timm's ModelEmaV2): why:
    a short schedule ends on a noisy iterate, the average of the last few hundred steps
    generalises better at no training cost. Floating tensors are averaged, integer buffers
    (BatchNorm's step count) copied; the decay ramps up as min(decay, (1 + t)/(10 + t)) so the
    first steps' random weights fade quickly."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # state_dict() tensors share storage with the modules, so updating them updates the
        # average; split once here, not on every step
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._avg_dst = [e for e, _ in pairs if e.is_floating_point()]
        self._avg_src = [m for e, m in pairs if e.is_floating_point()]
        self._copied = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the tracked model's current weights; `step` counts optimizer steps from 0."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        torch._foreach_lerp_(self._avg_dst, self._avg_src, 1.0 - d)
        for e, m in self._copied:
            e.copy_(m)


def load_pretrained(model: nn.Module, path: str) -> tuple[int, int]:
    """Copy every tensor of `path` whose name and shape match (a gasnas checkpoint's "model"
    or a bare state_dict). Returns (copied, total); nothing matching is an error."""

    blob = torch_load(path)
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise GasnasError(f"{path}: expected a state_dict or a gasnas checkpoint with 'model'")
    own = model.state_dict()
    ok = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    if not ok:
        raise GasnasError(f"{path}: no tensor matches this network (names or shapes differ)")
    model.load_state_dict(ok, strict=False)
    return len(ok), len(own)


def unused_space_keys(config_space: Any, genotype_space: Any) -> list[str]:
    """`space.*` settings of the config that differ from the genotype's and so shape nothing:
    the derived net is built from the genotype's space (only `aux_heads` comes from the config).
    Why: `gasnas train -g G --set space.head_channels=64` would otherwise be silently ignored."""
    return [f"space.{f.name} (config {getattr(config_space, f.name)}, genotype {getattr(genotype_space, f.name)})"
            for f in fields(config_space)
            if f.name != "aux_heads" and getattr(config_space, f.name) != getattr(genotype_space, f.name)]


def genotype_for_training(genotype: Any, cfg: Config) -> Any:
    """The genotype as trained: aux heads from this config, classes from its dataset."""
    space = replace(genotype.space, aux_heads=cfg.space.aux_heads)
    return replace(genotype, space=space, num_classes=cfg.data.num_classes)


def _new_accum() -> dict[str, float]:
    return {"loss": 0.0, "n": 0}


class TrainRun(EpochLoop):
    """State and loop of one training run (use `run_train`)."""

    def __init__(self, cfg: Config, rt: Runtime, run_dir: Path, genotype: Any, genotype_source: str,
                 resume: dict[str, Any] | None, ckpt_every_steps: int = 0,
                 show_progress: bool = True) -> None:
        self.cfg, self.rt, self.run_dir = cfg, rt, run_dir
        self.info, self.device, self.main = rt.dist, rt.device, rt.main
        self.ckpt_every = int(ckpt_every_steps or 0)
        self.show = show_progress and self.main
        self.ckpt_path, self.best_path = run_dir / LAST, run_dir / BEST
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=self.main, tensorboard=cfg.tensorboard)
        tc = cfg.train

        self.train_ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
        self.val_ds = build_dataset(cfg.data, cfg.data.val_split, train=False)
        self.class_names = list(class_names(cfg.data))
        self.palette = np.asarray(palette(cfg.data), dtype=np.uint8)
        self.num_classes = cfg.data.num_classes
        self.batches = EpochBatches(range(len(self.train_ds)), tc.batch_size, cfg.seed, TRAIN_STREAM,
                                    self.info.rank, self.info.world)
        self.steps_per_epoch = self.batches.batches_per_epoch
        if tc.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, max(1, tc.max_steps_per_epoch))
        if self.steps_per_epoch < 1:
            raise GasnasError(f"training needs at least train.batch_size = {tc.batch_size} images; "
                              f"{cfg.data.root} split '{cfg.data.train_split}' has {len(self.train_ds)}")
        self.total_iters = tc.epochs * self.steps_per_epoch
        self.loader = batch_loader(self.train_ds, self.batches, cfg.data.workers, self.device.type == "cuda")
        self.val_loader = eval_loader(self.val_ds, self.info.rank, self.info.world, cfg.data.workers)

        self.genotype = genotype_for_training(genotype, cfg) if not isinstance(genotype, str) else None
        self.genotype_source = genotype_source
        torch.manual_seed(cfg.seed)
        if self.genotype is None:  # a peer's name

            self.model: nn.Module = build_peer(str(genotype), self.num_classes).train()
        else:
            self.model = DerivedNet(self.genotype)
            unused = unused_space_keys(cfg.space, self.genotype.space)
            if unused:
                log("the network's shape comes from the genotype; these config settings differ and are not "
                    "used: " + "; ".join(unused), self.main)
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if tc.pretrained and resume is None:
            copied, total = load_pretrained(self.model, tc.pretrained)
            log(f"pretrained: {copied}/{total} tensors from {tc.pretrained}", self.main)
        self.model.to(self.device)
        if self.info.enabled:
            self.model = D.convert_batchnorm(self.model)  # SyncBatchNorm on nccl
            D.broadcast_module(self.model, self.info)
        self.ema = WeightEMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        # what the training step calls: the module, or its compiled graph (same parameters)
        self.step_model: nn.Module = torch.compile(self.model) if tc.compile else self.model
        self.aux = self.genotype is not None and bool(self.genotype.space.aux_heads)
        self.class_weights = None
        if tc.class_weighting != "none":
            counts = self.train_ds.class_pixel_counts(progress=self.show)
            if not counts.any():
                raise GasnasError(f"{cfg.data.root} split '{cfg.data.train_split}': no labelled pixel, so "
                                  f"train.class_weighting={tc.class_weighting} has nothing to weigh")
            self.class_weights = class_weights(counts, tc.class_weighting)
            log(f"class weights ({tc.class_weighting}): " + ", ".join(
                f"{n} {w:.2f}" for n, w in zip(self.class_names, self.class_weights)), self.main)
        self.criterion = build_criterion(cfg.data.ignore_index, True, tc.ohem_thresh, tc.ohem_min_kept,
                                         self.class_weights)
        self.dice = SoftDice(self.num_classes, cfg.data.ignore_index) if tc.dice_weight > 0 else None
        self.optimizer = make_optimizer(self.model, tc)
        self.amp = Precision(tc.amp, self.device, "train.amp")  # autocast (+ GradScaler for fp16)
        self.meta_base = {
            "class_names": self.class_names, "palette": self.palette.tolist(),
            "mean": list(MEAN), "std": list(STD), "dataset": cfg.data.format,
            "data_root": cfg.data.root, "config": cfg.to_dict(), "config_name": cfg.name,
            "seed": cfg.seed, "genotype_source": genotype_source, "class_weights": self.class_weights,
        }

        self.epoch, self.step, self.global_step = 0, 0, 0
        self.best_miou, self.best_epoch = -math.inf, None
        self.last_eval: dict[str, Any] = {"miou": None, "pixel_acc": None, "iou": None, "eval_epoch": None}
        self.accum = _new_accum()
        self.plot_throttle = PlotThrottle()
        if resume is not None:
            self._restore(resume)
        elif self.main:
            self.metrics.reset()

    # ------------------------------------------------------------------ checkpoints

    def meta(self) -> dict[str, Any]:
        """What a checkpoint says about itself; miou etc. are those of the latest evaluation."""
        return dict(self.meta_base, epoch=self.epoch, **self.last_eval)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved as "model": the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def payload(self, resumable: bool) -> dict[str, Any]:
        extra: dict[str, Any] = {"kind": "train" if resumable else "trained"}
        if resumable:
            extra.update(
                optimizer=self.optimizer.state_dict(), scaler=self.amp.state_dict(),
                epoch=self.epoch, step=self.step,
                global_step=self.global_step, steps_per_epoch=self.steps_per_epoch,
                best_miou=self.best_miou if self.best_epoch is not None else None,
                best_epoch=self.best_epoch, accum=dict(self.accum), rng=ckpt_io.rng_state())
            if self.ema is not None:  # "model" holds the EMA; the raw weights continue training
                extra["train_model"] = self.model.state_dict()
        return checkpoint_payload(self.eval_model, self.meta(), **extra)

    def checkpoint_state(self) -> dict[str, Any]:
        return self.payload(True)

    def _restore(self, ck: dict[str, Any]) -> None:
        self._check_resumable(ck)
        try:
            self.model.load_state_dict(ck.get("train_model", ck["model"]))
            if self.ema is not None:  # a run saved without EMA starts its average here
                self.ema.module.load_state_dict(ck["model"])
        except RuntimeError as exc:
            raise GasnasError(f"{self.ckpt_path}: weights do not match the network "
                              f"({str(exc).splitlines()[0]})") from None
        self.optimizer.load_state_dict(ck["optimizer"])
        self.amp.load_state_dict(ck.get("scaler"))
        if ck.get("best_miou") is not None:
            self.best_miou, self.best_epoch = float(ck["best_miou"]), ck.get("best_epoch")
        meta = ck.get("meta") or {}
        self.last_eval = {k: meta.get(k) for k in self.last_eval}
        self._resumed(ck)

    # ------------------------------------------------------------------ loop

    def run(self) -> Path:
        tc = self.cfg.train
        self._run_epochs(tc.epochs)
        if tc.logit_adjust and self.main:
            self._logit_adjust()
        if self.main:
            log(f"best val mIoU {100 * self.best_miou:.2f} (epoch {self.best_epoch}): {self.best_path}", True)
        D.barrier(self.info)
        return self.best_path

    def _logit_adjust(self) -> None:
        """`train.logit_adjust`: the post-training step of engine/evaluate.py
        `logit_adjust_checkpoint` on best.pt, logged with the run's metrics."""

        if self.genotype is None or self.class_weights is None:
            log("train.logit_adjust: only for a gasnas net trained with class weights; skipped", True)
            return
        record = logit_adjust_checkpoint(self.best_path, self.cfg, self.device, self.memory_format)
        if record is None:  # a resumed run whose best.pt records it already
            return
        self.best_miou = record["val_miou"]
        self.metrics.append({"logit_adjust_tau": record["tau"], "calibration_miou": record["calibration_miou"],
                             "val_miou_before": record["val_miou_before"], "val_miou": record["val_miou"],
                             "val_pixel_acc": record["val_pixel_acc"]})
        calib = record["calibration_miou"]
        log(f"logit adjustment: tau {record['tau']} (mIoU on {record['calibration_images']} training images "
            f"{100 * calib['0.0']:.2f} -> {100 * calib[str(record['tau'])]:.2f}); "
            f"val mIoU {100 * (record['val_miou_before'] or 0):.2f} -> {100 * record['val_miou']:.2f}", True)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """OHEM cross-entropy (+ dice_weight · soft Dice) on the logits, + aux_weight · the
        cross-entropy of each auxiliary head."""
        aux: list[torch.Tensor] = []
        if self.aux:
            logits, aux = self.step_model(images, return_aux=True)
        else:
            logits = self.step_model(images)
        loss = self.criterion(logits, labels, self.info)
        if self.dice is not None:
            loss = loss + self.cfg.train.dice_weight * self.dice(logits, labels, self.info)
        for a in aux:
            loss = loss + self.cfg.train.aux_weight * self.criterion(a, labels, self.info)
        return loss

    def _train_epoch(self, stop: StopSignal) -> None:
        tc, e = self.cfg.train, self.epoch
        self.model.train()
        self.batches.set_epoch(e, self.step, self.steps_per_epoch)
        bar = progress(self.loader, self.show, total=self.steps_per_epoch - self.step,
                       desc=f"train {e + 1}/{tc.epochs}")
        params = list(self.model.parameters())
        for images, labels in bar:
            lr = poly_lr(tc.lr, self.global_step, self.total_iters, tc.poly_power)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self.amp.autocast():
                loss = self.loss(images, labels)
            self.amp.backward(loss)
            value = float(D.global_mean(loss.detach().float(), self.info))
            check_finite(value, "training loss", e, self.step, self.ckpt_path)
            D.average_gradients(params, self.info)
            self.amp.step(self.optimizer)
            if self.ema is not None:
                self.ema.update(self.global_step)
            self.accum["loss"] += value
            self.accum["n"] += 1
            self.step += 1
            self.global_step += 1
            if self.show:
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}")
            if self.ckpt_every and self.global_step % self.ckpt_every == 0 and self.step < self.steps_per_epoch:
                self.save_checkpoint()
            self._check_stop(stop)

    def _end_epoch(self) -> None:
        tc, e = self.cfg.train, self.epoch
        t0 = time.perf_counter()
        every = tc.eval_every if tc.eval_every and tc.eval_every > 0 else tc.epochs
        row: dict[str, Any] = {
            "epoch": e + 1, "steps": self.accum["n"],
            "loss": self.accum["loss"] / self.accum["n"] if self.accum["n"] else None,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.epoch, self.step = e + 1, 0
        self.accum = _new_accum()
        result = None
        if (e + 1) % every == 0 or e + 1 == tc.epochs:
            result = evaluate(self.eval_model, self.val_loader, self.num_classes, self.cfg.data.ignore_index,
                              info=self.info, class_names=self.class_names, amp=tc.amp)
            self.last_eval = {"miou": result["miou"], "pixel_acc": result["pixel_acc"],
                              "iou": nan_to_none(result["iou"]), "eval_epoch": e + 1}
            improved = self.best_epoch is None or result["miou"] > self.best_miou
            if improved:
                self.best_miou, self.best_epoch = result["miou"], e + 1
                if self.main:
                    ckpt_io.save(self.best_path, self.payload(False))
            row.update(val_miou=result["miou"], val_pixel_acc=result["pixel_acc"],
                       val_mean_acc=result["mean_acc"], best_miou=self.best_miou, best_epoch=self.best_epoch)
            log(f"epoch {e + 1}/{tc.epochs} loss {row['loss']:.4f} val mIoU {100 * result['miou']:.2f} "
                f"(best {100 * self.best_miou:.2f} @ {self.best_epoch})", self.main)
        row["epoch_end_s"] = round(time.perf_counter() - t0, 3)
        if self.main:
            self.metrics.append(row)
            if self.plot_throttle.due(force=result is not None):
                self._plots(result is not None)
        self.save_checkpoint()

    def _plots(self, evaluated: bool) -> None:
        from gasnas import viz  # matplotlib: loaded only when a run plots

        rows = self.metrics.rows()
        plots = self.run_dir / "plots"
        safe_plot(viz.plot_curves, rows, plots / "loss.png", ["loss", "lr"])
        safe_plot(viz.plot_curves, rows, plots / "miou.png", ["val_miou", "val_pixel_acc"])
        if evaluated:
            safe_plot(self._plot_examples, plots / "predictions.png")
            if rows:
                self.metrics.tensorboard.image("predictions", plots / "predictions.png", int(rows[-1].get("epoch") or 0))

    def _plot_examples(self, path: Path, n: int = 4) -> None:
        from gasnas.viz import plot_predictions  # matplotlib: loaded only when a run plots

        images, labels, preds = [], [], []
        model = self.eval_model
        was_training = model.training
        model.eval()
        try:
            for i in range(min(n, len(self.val_ds))):
                x, y = self.val_ds[i]
                with torch.no_grad():
                    p = predict(model, x.unsqueeze(0).to(self.device)).argmax(1)[0].cpu()
                img = (denormalize(x).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                images.append(img)
                labels.append(y.numpy())
                preds.append(p.numpy())
        finally:
            model.train(was_training)
        plot_predictions(images, labels, preds, self.palette, path)


def prepare_train_dir(cfg: Config, genotype_path: str | Path | None, resume: str | Path | None,
                      run_dir: str | Path | None, rt: Runtime, peer: str | None = None,
                      ) -> tuple[Path, Any, str, dict[str, Any] | None]:
    """(run folder, genotype (or a peer's name), where it came from, checkpoint to resume or None)."""

    genotype: Any
    if resume is not None:
        out = Path(resume)
        ck = ckpt_io.load(ckpt_io.resume_file(out, LAST), "train")
        if "peer" in ck:
            genotype = str(ck["peer"])
        else:
            genotype = Genotype.from_dict(ck["genotype"], f"{out / LAST}:genotype")
        source = str((ck.get("meta") or {}).get("genotype_source", out / LAST))
    else:
        if (genotype_path is None) == (peer is None):
            raise GasnasError("train needs exactly one of --genotype GENOTYPE.json or --peer NAME "
                              "(or --resume RUN_DIR)")
        out = Path(run_dir) if run_dir is not None else cfg.run_dir / "train"
        if (out / LAST).is_file():
            raise GasnasError(f"{out} already holds a training run: resume it with --resume {out}, "
                              "or train elsewhere with --set name=NEW_NAME (or --run-dir)")
        if peer is not None:

            if peer not in PEERS:
                raise GasnasError(f"--peer {peer}: expected one of {', '.join(PEERS)}")
            genotype, source = peer, f"peer:{peer}"
        else:
            genotype, source = Genotype.load(genotype_path), str(resolve_genotype(genotype_path))
        ck = None
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.dump())
        if not isinstance(genotype, str):
            genotype_for_training(genotype, cfg).save(out / "genotype.json")
    D.barrier(rt.dist)
    return out, genotype, source, ck


def run_train(cfg: Config, genotype_path: str | Path | None, resume: str | Path | None = None, *,
              run_dir: str | Path | None = None, ckpt_every_steps: int = 0,
              show_progress: bool = True, peer: str | None = None) -> Path:
    """Train the derived net of `genotype_path` (or the torchvision `peer`) from scratch; returns
    the best checkpoint path.

    `resume`: a training folder whose last.pt continues where it stopped (the genotype comes
    from the checkpoint). `run_dir` defaults to cfg.run_dir / "train".
    """

    rt = setup(cfg)
    out, genotype, source, ck = prepare_train_dir(cfg, genotype_path, resume, run_dir, rt, peer)
    if ck is not None and ck.get("meta", {}).get("config", {}).get("data", {}).get("num_classes") not in (
            None, cfg.data.num_classes):
        raise GasnasError(f"{out / LAST}: trained for a different number of classes than data.num_classes")
    return TrainRun(cfg, rt, out, genotype, source, ck, ckpt_every_steps, show_progress).run()
