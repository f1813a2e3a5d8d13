"""Search: the first-order bilevel loop that turns a supernet into a genotype.

Where things happen:
- the supernet WEIGHTS are updated in `weight_step` (below), on the weight split;
- α (one tensor per cell) and the GGM are updated in `Architect.step` (engine/architect.py),
  on the architecture split;
- latency enters the architecture loss in `Architect.loss`: latency_loss(E[Lat](softmax(α')));
- the step's cell weights (softmax mixture or a sampled path) come from engine/relaxation.py;
- λ, its warm-in, the per-stage balance and the budget (`latency.loss: target`, `gasnas search
  --target-ms T`) are one policy object, latency/budget.py `LatencyBudget`, asked every step;
  the derived net's MEASURED latency at each epoch end recalibrates the budget;
- the genotype is derived at the end of every epoch (`gasnas.space.derive_genotype`).

One epoch: the training split is divided 50/50 (weights / architecture; fixed by the seed).
For each step: one SGD step of the weights on a weight-split batch (lr cosine from search.w_lr
to search.w_lr_min over the epochs, momentum, weight decay, gradient clipping), then — after
`search.warmup_epochs` epochs of weight-only training — one Adam step of α + GGM on an
architecture-split batch. At the end of the epoch: derive the genotype, log E[Lat], the
predicted and measured latency of the derived net, the supernet's val mIoU, α' spread and
entropy per cell, the share of kept edges whose op changed, the GGM's adjacency entropy, λ and
the budget; write `genotype_epoch{N}.json`, `metrics.jsonl`, plots and a checkpoint.

Run folder (`cfg.run_dir`): config.yaml, lut.json, genotype_epoch{N}.json, genotype.json,
metrics.jsonl, plots/, checkpoints/last.pt (resume with `--resume RUN_DIR`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gasnas.config import Config, search_data_config
from gasnas.data import build_dataset, class_names
from gasnas.engine import checkpoint as ckpt_io
from gasnas.engine import distributed as D
from gasnas.engine.amp import Precision
from gasnas.engine.architect import Architect, frozen
from gasnas.engine.evaluate import evaluate
from gasnas.engine.losses import build_criterion
from gasnas.engine.relaxation import Relaxation, temperature
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
from gasnas.engine.sampling import EpochBatches, batch_loader, eval_loader, split_indices
from gasnas.errors import GasnasError
from gasnas.ggm import adjacency_entropy
from gasnas.latency import LatencyEstimator, LatencyTable, get_or_build_lut
from gasnas.latency.budget import LatencyBudget, fit_to_budget
from gasnas.latency.isolated import PeerReference, reference_from_dict
from gasnas.latency.sampling import genotype_signature
from gasnas.latency.timers import derived_net_timer
from gasnas.space.genotype import Genotype, derive_genotype
from gasnas.space.network import net_stride, padded_size
from gasnas.space.supernet import Supernet

WEIGHT_STREAM, ARCH_STREAM = 1, 2
CHECKPOINT = "checkpoints/last.pt"
TARGET_TOLERANCE = 0.10  # --target-ms: the final genotype should land within ±10% of T


def cosine_lr(epoch: int, epochs: int, lr_max: float, lr_min: float) -> float:
    """Cosine annealing per epoch, from lr_max at epoch 0 towards lr_min."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def weight_step(supernet: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                images: torch.Tensor, labels: torch.Tensor, grad_clip: float,
                info: D.DistInfo, weights: list[Any] | None = None,
                precision: Precision | None = None) -> dict[str, Any]:
    """One SGD step of the supernet weights on a weight-split batch; α and the GGM are frozen
    (no gradient is computed for them). `weights`: the step's cell weights (engine/relaxation.py;
    None: softmax(α')). A non-finite loss skips the update. The weight gradients are freed
    afterwards, so that the architecture step does not hold them. `precision` (search.amp):
    forward + loss under autocast; fp16 scales the loss and unscales before clipping."""
    params = supernet.weight_parameters()
    amp = precision or Precision("none", images.device)
    optimizer.zero_grad(set_to_none=True)
    with frozen(supernet.arch_parameters()), supernet.using(weights):
        with amp.autocast():
            loss = criterion(supernet(images), labels, info)
        amp.backward(loss)
    value = float(D.global_mean(loss.detach().float(), info))
    finite = math.isfinite(value)
    if finite:
        D.average_gradients(params, info)
        amp.unscale_(optimizer)
        if grad_clip and grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        amp.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return {"loss": value, "finite": finite}


def _probs_and_logs(op_weights: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each cell's per-edge op probabilities (fp64, clamped off 0) and their logs."""
    probs = [w.detach().double().clamp_min(1e-12) for w in op_weights]
    return [(p, p.log()) for p in probs]


def alpha_entropy(op_weights: list[torch.Tensor]) -> list[float]:
    """Mean entropy (nats) of each cell's per-edge op distribution; log(#ops) = uniform."""
    return [float(-(p * logp).sum(-1).mean()) for p, logp in _probs_and_logs(op_weights)]


def alpha_spread(op_weights: list[torch.Tensor]) -> list[float]:
    """Mean over each cell's edges of log(p_max / p_min), the gap in logits between an edge's
    most and least likely op (0 = uniform). Entropy hardly shows a short search: it falls with
    the square of α's movement (0.03% in the demo, whose spread is ~0.10), this grows linearly."""
    return [float((logp.max(-1).values - logp.min(-1).values).mean()) for _, logp in _probs_and_logs(op_weights)]


def alpha_margin(op_weights: list[torch.Tensor]) -> list[float]:
    """Mean over each cell's edges of log(p_1st / p_2nd), the logit gap between an edge's two
    likeliest ops: how decided the choice is. The spread can grow while this stays small (one
    op pushed far down, the top two still close), so the two are logged side by side."""
    out = []
    for _, logp in _probs_and_logs(op_weights):
        top = logp.topk(2, dim=-1).values if logp.shape[-1] > 1 else torch.cat([logp, logp], -1)
        out.append(float((top[..., 0] - top[..., 1]).mean()))
    return out


# Below this mean spread (logits) at the end of a search, α' is still near its initialisation:
# the genotype follows the first trend of α's gradients, not a converged search (0.5: the
# likeliest op is 1.65x as likely as the least). SETTLED_SPREAD is the goal of a converged
# search: the likeliest op at least 7x the least likely.
UNSETTLED_SPREAD = 0.5
SETTLED_SPREAD = 2.0
SETTLE_EPOCHS = 3  # settled: the kept edges did not change over the last this many epochs


def kept_edges(genotype: Any) -> list[list[list[Any]]]:
    """A genotype's kept edges per cell, as plain lists ([source, node, op])."""
    return [[list(e) for e in c.edges] for c in genotype.cells]


def changed_fraction(previous: list[list[list[Any]]] | None, current: Any) -> float | None:
    """Share of `current`'s kept (cell, source, node) edges whose op differs from the
    `previous` epoch's kept edges (`kept_edges`) or that it did not keep (None: no previous)."""
    if previous is None:
        return None
    before = {(k, s, d): op for k, c in enumerate(previous) for s, d, op in c}
    now = [((k, s, d), op) for k, c in enumerate(current.cells) for s, d, op in c.edges]
    if not now:
        return 0.0
    return sum(before.get(key) != op for key, op in now) / len(now)


def stable_fraction(genotypes: list[Any]) -> float | None:
    """Share of the last genotype's kept edges that every earlier one in `genotypes` kept with
    the same op (None for fewer than two)."""
    if len(genotypes) < 2:
        return None
    last = genotypes[-1]
    edges = [(k, s, d, op) for k, c in enumerate(last.cells) for s, d, op in c.edges]
    if not edges:
        return 1.0
    sets = [{(k, s, d, op) for k, c in enumerate(g.cells) for s, d, op in c.edges} for g in genotypes[:-1]]
    return sum(all(e in other for other in sets) for e in edges) / len(edges)


def skip_share(genotype: Any) -> float:
    """Share of the kept edges that are `skip_connect`."""
    counts = genotype.op_counts()
    total = sum(counts.values())
    return counts.get("skip_connect", 0) / total if total else 0.0


def small_map_dilations(space: Any, crop: list[int]) -> list[str]:
    """Dilated ops whose 3x3 footprint (2r+1) exceeds the smallest map the search sees at
    `crop`: there they read mostly padding, and the search cannot value them."""

    h, w = padded_size(space, int(crop[0]), int(crop[1]))
    smallest = min(h, w) // net_stride(space)
    out = []
    for op in space.ops:
        if "_r" in op and op.rsplit("_r", 1)[1].isdigit() and 2 * int(op.rsplit("_r", 1)[1]) + 1 > smallest:
            out.append(op)
    return out


def _new_accum() -> dict[str, float]:
    return {"w_loss": 0.0, "w_n": 0, "a_loss": 0.0, "a_ce": 0.0, "a_lat": 0.0, "a_n": 0,
            "lam_eff": 0.0, "derived_ms": 0.0}


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def shared_lut(cfg: Config, run_dir: Path, num_classes: int, info: D.DistInfo,
               show_progress: bool) -> tuple[Any, Any]:
    """(latency table, the LatencyConfig to check it with). Rank 0 builds or loads the table
    (`get_or_build_lut`, saved as run_dir/lut.json) and sends it to the other ranks, so no
    shared filesystem is needed; an error on rank 0 is raised on every rank."""

    shared = None
    if info.main:
        try:
            shared = ("ok", get_or_build_lut(cfg, run_dir, num_classes, progress=show_progress))
        except GasnasError as exc:
            D.broadcast_object(("error", str(exc)), info)
            raise
    if not info.enabled:
        return shared[1], cfg.latency
    received = D.broadcast_object(("ok", shared[1].to_dict()) if info.main else None, info)
    if received[0] == "error":
        raise GasnasError(received[1])
    if info.main:
        return shared[1], cfg.latency
    table = LatencyTable.from_dict(received[1], run_dir / "lut.json")
    return table, replace(cfg.latency, allow_foreign_lut=True)  # rank 0 has checked it


class SearchRun(EpochLoop):
    """State and loop of one search run (use `run_search`)."""

    def __init__(self, cfg: Config, rt: Runtime, run_dir: Path, resume: dict[str, Any] | None,
                 ckpt_every_steps: int = 0, show_progress: bool = True) -> None:
        self.cfg, self.rt, self.run_dir = cfg, rt, run_dir
        self.info, self.device, self.main = rt.dist, rt.device, rt.main
        self.ckpt_every = int(ckpt_every_steps or 0)
        self.show = show_progress and self.main
        self.ckpt_path = run_dir / CHECKPOINT
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=self.main, tensorboard=cfg.tensorboard)

        # ---- data: 50/50 split of the training images, val split for the supernet mIoU
        sc = cfg.search
        data_cfg = search_data_config(cfg)  # search.crop_size / eval_size may be smaller
        self.train_ds = build_dataset(data_cfg, cfg.data.train_split, train=True)
        self.val_ds = build_dataset(data_cfg, cfg.data.val_split, train=False)
        self.class_names = list(class_names(cfg.data))
        self.num_classes = cfg.data.num_classes
        w_idx, a_idx = split_indices(len(self.train_ds), cfg.seed)
        self.w_batches = EpochBatches(w_idx, sc.batch_size, cfg.seed, WEIGHT_STREAM, self.info.rank, self.info.world)
        self.a_batches = EpochBatches(a_idx, sc.batch_size, cfg.seed, ARCH_STREAM, self.info.rank, self.info.world)
        self.steps_per_epoch = min(self.w_batches.batches_per_epoch, self.a_batches.batches_per_epoch)
        if sc.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, max(1, sc.max_steps_per_epoch))
        if self.steps_per_epoch < 1:
            raise GasnasError(
                f"search needs at least 2 x search.batch_size = {2 * sc.batch_size} training images "
                f"(half for the weights, half for the architecture); {cfg.data.root} split "
                f"'{cfg.data.train_split}' has {len(self.train_ds)}")
        pin = self.device.type == "cuda"
        self.w_loader = batch_loader(self.train_ds, self.w_batches, cfg.data.workers, pin)
        self.a_loader = batch_loader(self.train_ds, self.a_batches, cfg.data.workers, pin)
        self.val_loader = eval_loader(self.val_ds, self.info.rank, self.info.world, cfg.data.workers)

        # ---- latency table (rank 0 builds or loads it; lut.json in the run folder)
        lut, lat_cfg = shared_lut(cfg, run_dir, self.num_classes, self.info, self.show)
        self.estimator = LatencyEstimator(cfg.space, self.num_classes, lut, cfg.latency.input_size, lat_cfg)

        # ---- supernet, optimizers
        torch.manual_seed(cfg.seed)
        self.supernet = Supernet(cfg.space, self.num_classes,
                                 recompute_stages=sc.recompute_stages).to(self.device)
        if self.info.enabled:
            # The fused mixed-op path runs F.batch_norm itself; unfuse so that every BatchNorm
            # module computes global statistics (same function, same parameters).
            for m in self.supernet.modules():
                if hasattr(m, "fused"):
                    m.fused = False
            self.supernet = D.convert_batchnorm(self.supernet)  # SyncBatchNorm on nccl
            D.broadcast_module(self.supernet, self.info)
        # Search loss: cross-entropy; OHEM (train.ohem_thresh / ohem_min_kept) if `search.ohem`.
        self.criterion = build_criterion(cfg.data.ignore_index, bool(getattr(sc, "ohem", False)),
                                         cfg.train.ohem_thresh, cfg.train.ohem_min_kept)
        self.w_optimizer = torch.optim.SGD(self.supernet.weight_parameters(), lr=sc.w_lr,
                                           momentum=sc.w_momentum, weight_decay=sc.w_weight_decay)
        # search.amp: one autocast/GradScaler per optimizer (engine/amp.py)
        self.w_amp = Precision(sc.amp, self.device, "search.amp")
        self.a_amp = Precision(sc.amp, self.device, "search.amp")
        # λ and the budget: one policy object (latency/budget.py); the step's cell weights:
        # softmax mixture or sampled path (engine/relaxation.py)
        self.budget = LatencyBudget(cfg.latency, sc, self.estimator)
        self.relaxation = Relaxation(sc, list(cfg.space.ops), cfg.seed, cfg.latency.expectation)
        self.architect = Architect(self.supernet, self.criterion, sc, self.budget, self.relaxation, self.info,
                                   self.a_amp)

        # ---- position
        lc = cfg.latency
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.accum = _new_accum()
        self.previous_edges: list[Any] | None = None  # the last epoch's, for the share of changed edges
        threads = lc.threads or lut.env.get("threads") or torch.get_num_threads()
        # how derived nets are timed (latency/timers.py): a fresh process on the calm-phase scale, or here
        peer = PeerReference(lc.reference_peer, self.num_classes) if lc.target_ratio is not None else None
        self.timer = derived_net_timer(lc, int(threads), sc.measure_isolated, sc.measure_rounds, peer)
        self.plot_throttle = PlotThrottle()
        if resume is not None:
            self._restore(resume)  # restores the budget too
        else:
            self._budget_from_peer()
            self._refresh_budget(ramp=0.0)
            if self.main:
                self.metrics.reset()
                self._note_search_setup()

    # ------------------------------------------------------------------ latency budget

    def _derive(self, provenance: dict[str, Any] | None = None) -> Any:
        return derive_genotype(self.supernet, provenance or {}, None, max_skip=self.cfg.search.max_skip_per_cell)

    def _budget_from_peer(self) -> None:
        """`latency.target_ratio`: T = ratio × the peer's latency on the scale the derived nets
        are measured on (rank 0 times it; a calm-phase timer learns it beside a derived net).
        Called at the start and after each epoch's measurement, so T follows the peer's calmest
        timing as the derived nets' milliseconds do."""
        ratio = self.cfg.latency.target_ratio
        if ratio is None:
            return
        ms = None
        if self.main:
            ms = self.timer.peer_ms()
            if ms is None:
                self.timer.measure(self._derive())
                ms = self.timer.peer_ms()
        ms = D.broadcast_object(ms, self.info)
        if ms is None:
            raise GasnasError("latency.target_ratio: the reference peer could not be timed")
        self.budget.set_target(ratio * float(ms))

    def _refresh_budget(self, ramp: float) -> float:
        """After an architecture step (and at the start): E[Lat] and the derived net's LUT
        prediction of the current α' go to the budget policy. Returns the prediction."""
        with torch.no_grad():
            expected = float(self.estimator.expected_ms(self.supernet.op_weights()))
        predicted = float(self.estimator.predict(self._derive()))
        self.budget.after_step(expected, predicted, ramp)
        return predicted

    def _note_search_setup(self) -> None:
        """One line on what this search will do, and a warning for dilations it cannot value."""
        sc, crop = self.cfg.search, self.cfg.search.crop_size or self.cfg.data.crop_size
        arch_steps = (sc.epochs - sc.warmup_epochs) * self.steps_per_epoch
        log(f"search: {sc.relaxation} relaxation, {sc.epochs} epochs ({sc.warmup_epochs} warm-up) of "
            f"{self.steps_per_epoch} steps: {arch_steps} architecture steps", True)
        wide = small_map_dilations(self.cfg.space, crop)
        if wide:
            log(f"warning: at the search crop {crop[0]}x{crop[1]} the coarsest maps are smaller than the "
                f"footprint of {', '.join(wide)}: they read mostly padding there, and the search cannot "
                "value them (search.crop_size)", True)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "kind": "search",
            "config": self.cfg.to_dict(),
            "supernet": self.supernet.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.architect.state_dict(),
            "w_scaler": self.w_amp.state_dict(),
            "a_scaler": self.a_amp.state_dict(),
            "budget": self.budget.state_dict(),
            "relaxation": self.relaxation.state_dict(),
            "previous_edges": self.previous_edges,
            "calm_latency": self.timer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "accum": dict(self.accum),
            "rng": ckpt_io.rng_state(),
        }

    def _restore(self, ck: dict[str, Any]) -> None:
        if ck["config"].get("space") != asdict(self.cfg.space):
            raise GasnasError(f"{self.ckpt_path}: the checkpoint's search space differs from the config's; "
                              "resume with the run's own config.yaml")
        self._check_resumable(ck, " (batch size, data or search.max_steps_per_epoch changed)")
        self.supernet.load_state_dict(ck["supernet"])
        self.w_optimizer.load_state_dict(ck["w_optimizer"])
        self.architect.load_state_dict(ck["a_optimizer"])
        self.w_amp.load_state_dict(ck.get("w_scaler"))
        self.a_amp.load_state_dict(ck.get("a_scaler"))
        self.budget.load_state_dict(ck.get("budget", {}))
        self.relaxation.load_state_dict(ck.get("relaxation", {}))
        self.previous_edges = ck.get("previous_edges")
        self.timer.load_state_dict(ck.get("calm_latency", {}))
        self._resumed(ck)

    # ------------------------------------------------------------------ loop

    def run(self) -> Path:
        self._run_epochs(self.cfg.search.epochs)
        return self._finish()

    def _train_epoch(self, stop: StopSignal) -> None:
        sc, e = self.cfg.search, self.epoch
        lr = cosine_lr(e, sc.epochs, sc.w_lr, sc.w_lr_min)
        for group in self.w_optimizer.param_groups:
            group["lr"] = lr
        search_arch = e >= sc.warmup_epochs
        self.supernet.train()
        self.w_batches.set_epoch(e, self.step, self.steps_per_epoch)
        self.a_batches.set_epoch(e, self.step, self.steps_per_epoch)
        # During warm-up the architecture split is not even loaded.
        batches = (zip(self.w_loader, self.a_loader) if search_arch
                   else ((b, None) for b in self.w_loader))
        desc = f"{'warm-up' if not search_arch else 'search'} {e + 1}/{sc.epochs}"
        bar = progress(batches, self.show, total=self.steps_per_epoch - self.step, desc=desc)
        for (xw, yw), arch_batch in bar:
            xw, yw = xw.to(self.device, non_blocking=True), yw.to(self.device, non_blocking=True)
            with torch.no_grad():
                net_w, _ = self.relaxation.step_weights(self.supernet, e, self.step, self.steps_per_epoch)
            w = weight_step(self.supernet, self.w_optimizer, self.criterion, xw, yw, sc.grad_clip, self.info, net_w,
                            self.w_amp)
            check_finite(w["loss"], "weight loss", e, self.step, self.ckpt_path)
            self.accum["w_loss"] += w["loss"]
            self.accum["w_n"] += 1
            post = {"w": f"{w['loss']:.3f}"}
            if arch_batch is not None:
                xa, ya = arch_batch
                xa, ya = xa.to(self.device, non_blocking=True), ya.to(self.device, non_blocking=True)
                lam_eff = self.budget.lam_eff(e, self.step, self.steps_per_epoch)
                a = self.architect.step(xa, ya, e, self.step, self.steps_per_epoch)
                check_finite(a["loss"], "architecture loss", e, self.step, self.ckpt_path)
                derived = self._refresh_budget(self.budget.ramp(e, self.step, self.steps_per_epoch))
                self.accum["a_loss"] += a["loss"]
                self.accum["a_ce"] += a["ce"]
                self.accum["a_lat"] += a["lat_loss"]
                self.accum["lam_eff"] += lam_eff
                self.accum["derived_ms"] += derived
                self.accum["a_n"] += 1
                post.update(a=f"{a['loss']:.3f}", ms=f"{a['expected_ms']:.2f}", d=f"{derived:.1f}")
            self.step += 1
            self.global_step += 1
            if self.show:
                bar.set_postfix(post)
            if self.ckpt_every and self.global_step % self.ckpt_every == 0 and self.step < self.steps_per_epoch:
                self.save_checkpoint()
            self._check_stop(stop)

    def _measure(self, genotype: Any) -> float | None:
        """Measured latency of the derived net on rank 0 (shared with the others), by the run's
        timer (latency/timers.py)."""
        ms = self.timer.measure(genotype) if self.cfg.search.measure_derived and self.main else None
        return D.broadcast_object(ms, self.info)

    def _end_epoch(self) -> None:
        cfg, e = self.cfg, self.epoch
        t0 = time.perf_counter()
        with torch.no_grad():
            op_weights = [w.detach().cpu() for w in self.supernet.op_weights()]
            expected = float(self.estimator.expected_ms([w.to(self.device) for w in op_weights]))
            adj_entropy = adjacency_entropy(self.supernet.ggm, list(self.supernet.alphas))
        genotype = self._derive(self._provenance(e + 1))
        genotype.predicted_latency_ms = argmax_ms = float(self.estimator.predict(genotype))
        swaps = 0
        limit = self.budget.predicted_limit_ms() if self.budget.targeted else math.inf
        if cfg.search.derive_within_budget and argmax_ms > limit * (1 + cfg.search.budget_slack):
            genotype, swaps = fit_to_budget(genotype, op_weights, self.estimator, limit, cfg.search.max_skip_per_cell)
        genotype.provenance.update(argmax_predicted_ms=argmax_ms, budget_swaps=swaps)
        measured = self._measure(genotype)
        genotype.provenance["measured_latency_ms"] = measured
        with self.supernet.using(self.relaxation.eval_weights(self.supernet)):
            result = evaluate(self.supernet, self.val_loader, self.num_classes, cfg.data.ignore_index,
                              info=self.info, class_names=self.class_names, amp=cfg.search.amp)
        lam_used, scale_used = self.budget.lam, self.budget.budget_scale
        self.budget.end_epoch(genotype.predicted_latency_ms, measured, genotype_signature(genotype))
        self._budget_from_peer()
        changed = changed_fraction(self.previous_edges, genotype)
        self.previous_edges = kept_edges(genotype)
        entropy, spread, margin = alpha_entropy(op_weights), alpha_spread(op_weights), alpha_margin(op_weights)
        n_arch = self.accum["a_n"]
        row = {
            "epoch": e + 1,
            "phase": "search" if e >= cfg.search.warmup_epochs else "warmup",
            "steps": self.accum["w_n"],
            "arch_steps": n_arch,
            "lr": self.w_optimizer.param_groups[0]["lr"],
            "lambda": lam_used,
            "lambda_eff_mean": _mean(self.accum["lam_eff"], n_arch),
            "budget_scale": scale_used,
            "budget_ms": self.budget.target_ms if self.budget.targeted else None,
            "peer_ms": self.timer.peer_ms() if cfg.latency.target_ratio is not None and self.main else None,
            "calibration": self.budget.calibration,
            "derived_ms_mean": _mean(self.accum["derived_ms"], n_arch),
            "stage_balance": self.budget.cell_balance() and sorted(set(
                round(b, 4) for b in self.budget.cell_balance())),
            "tau": (temperature(cfg.search, e, self.steps_per_epoch, self.steps_per_epoch)
                    if self.relaxation.sampled else None),
            "changed_fraction": changed,
            "skip_share": skip_share(genotype),
            "ggm_adjacency_entropy": adj_entropy,
            "w_loss": _mean(self.accum["w_loss"], self.accum["w_n"]),
            "a_loss": _mean(self.accum["a_loss"], self.accum["a_n"]),
            "a_ce": _mean(self.accum["a_ce"], self.accum["a_n"]),
            "lat_loss": _mean(self.accum["a_lat"], self.accum["a_n"]),
            "expected_ms": expected,
            "predicted_ms": genotype.predicted_latency_ms,
            "argmax_predicted_ms": argmax_ms,  # the argmax net of α', before fit_to_budget
            "budget_swaps": swaps,
            "measured_ms": measured,
            # the measured net's latency / the reference net's: select_final re-scales it with
            # the reference's calmest timing at the end of the search
            "latency_ratio": self.timer.ratio(genotype) if measured is not None else None,
            "val_miou": result["miou"],
            "val_pixel_acc": result["pixel_acc"],
            "alpha_entropy": entropy,
            "alpha_entropy_mean": _mean(sum(entropy), len(entropy)),
            "alpha_spread": spread,
            "alpha_spread_mean": _mean(sum(spread), len(spread)),
            "alpha_margin": margin,
            "alpha_margin_mean": _mean(sum(margin), len(margin)),
            "genotype": f"genotype_epoch{e + 1}.json",
            "epoch_end_s": round(time.perf_counter() - t0, 3),
        }
        if self.main:
            genotype.provenance.update(epoch=e + 1, val_miou_supernet=result["miou"], **{"lambda": lam_used})
            genotype.save(self.run_dir / row["genotype"])
            self.metrics.append(row)
            if self.plot_throttle.due(force=e + 1 == cfg.search.epochs):
                self._plots(op_weights)
            ms = f"{measured:.2f}" if measured is not None else "n/a"
            moved = f"{100 * changed:.0f}%" if changed is not None else "n/a"
            log(f"epoch {e + 1}/{cfg.search.epochs} [{row['phase']}] w_loss {row['w_loss']:.4f} "
                f"E[Lat] {expected:.2f} ms, derived {genotype.predicted_latency_ms:.2f} ms predicted / "
                f"{ms} measured, supernet val mIoU {100 * result['miou']:.2f}, λ {lam_used:.3g}, "
                f"α' spread {row['alpha_spread_mean'] or 0:.3f} (top-2 margin {row['alpha_margin_mean'] or 0:.3f}), edges changed {moved}, "
                f"skip {100 * row['skip_share']:.0f}%"
                + (f", {swaps} ops swapped to fit the budget (argmax net {argmax_ms:.2f} ms)" if swaps else ""), True)
        D.barrier(self.info)
        self.epoch, self.step = e + 1, 0
        self.accum = _new_accum()
        self.save_checkpoint()

    def _provenance(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "dataset": cfg.data.format, "data_root": cfg.data.root, "seed": cfg.seed,
            "config": cfg.name, "run_dir": str(self.run_dir), "epoch": epoch,
            "latency_device": cfg.latency.device, "latency_backend": cfg.latency.backend,
            "latency_input_size": list(cfg.latency.input_size), "latency_loss": cfg.latency.loss,
            "target_ms": self.budget.target_ms, "world_size": self.info.world,
            **({"target_ratio": cfg.latency.target_ratio, "reference_peer": cfg.latency.reference_peer}
               if cfg.latency.target_ratio is not None else {}),
        }

    def _plots(self, op_weights: list[torch.Tensor]) -> None:
        from gasnas import viz  # matplotlib: loaded only when a run plots

        rows = self.metrics.rows()
        plots = self.run_dir / "plots"
        safe_plot(viz.plot_curves, rows, plots / "losses.png", ["w_loss", "a_loss", "a_ce", "lat_loss"])
        safe_plot(viz.plot_curves, rows, plots / "miou.png", ["val_miou", "val_pixel_acc"])
        safe_plot(viz.plot_curves, rows, plots / "latency.png",
                  ["expected_ms", "predicted_ms", "measured_ms", "lambda"])
        safe_plot(viz.plot_curves, rows, plots / "alpha_movement.png",
                  ["alpha_spread_mean", "alpha_margin_mean", "alpha_entropy_mean"])
        safe_plot(viz.plot_convergence, rows, plots / "convergence.png")
        safe_plot(viz.plot_alphas, op_weights, list(self.cfg.space.ops), plots / "alphas.png")
        if self.metrics.tensorboard.writer is not None and rows:

            epoch = int(rows[-1].get("epoch") or 0)
            cells = self.run_dir / f"genotype_epoch{epoch}.json"
            if cells.is_file():
                safe_plot(viz.plot_genotype, Genotype.load(cells), plots / "cells_epoch.png")
            for name in ("alphas", "convergence", "cells_epoch"):
                self.metrics.tensorboard.image(name, plots / f"{name}.png", epoch)

    # ------------------------------------------------------------------ the end

    def measured_ms(self, row: dict[str, Any]) -> float | None:
        """An epoch's measured latency as known at the end: its ratio to the reference net times
        the reference's calmest timing of the whole search (else the logged number)."""
        return self.timer.final_ms(row.get("measured_ms"), row.get("latency_ratio"))

    def select_final(self) -> tuple[int, dict[str, Any]]:
        """Which epoch's genotype becomes genotype.json: the last one, except with a latency
        target, where it is the latest of the last SETTLE_EPOCHS + 1 epochs measured within ±10% of
        the target (or, if none is, the last one, with a warning). An earlier epoch inside the
        budget is not taken: it is a net the search went on to change, not what it settled on."""
        rows = [r for r in self.metrics.rows() if "genotype" in r]
        if not rows:
            raise GasnasError(f"{self.run_dir}: no epoch finished, no genotype to write")
        last = rows[-1]
        target = self.budget.target_ms
        if self.cfg.latency.loss != "target" or not target:
            return last["epoch"], last
        pool = ([r for r in rows if r.get("phase") == "search"] or rows)[-(SETTLE_EPOCHS + 1):]

        def ms(r: dict[str, Any]) -> float:
            measured = SearchRun.measured_ms(self, r)
            return measured if measured is not None else r["predicted_ms"]

        inside = [r for r in pool if abs(ms(r) - target) <= TARGET_TOLERANCE * target]
        if inside:
            return inside[-1]["epoch"], inside[-1]
        log(f"warning: the derived net the search settled on is not within ±{100 * TARGET_TOLERANCE:.0f}% "
            f"of the {target} ms target (epoch {last['epoch']}: {ms(last):.2f} ms). More search epochs, "
            "a larger latency.lambda_lr or a budget further from the space's cheapest net may help.", self.main)
        return last["epoch"], last

    def settledness(self) -> dict[str, Any]:
        """How settled the search ended: final α' spread, the share of kept edges unchanged over
        the last 3 epochs (all four genotypes agree), the skip share of the final genotype."""

        rows = [r for r in self.metrics.rows() if "genotype" in r]
        last = rows[-(SETTLE_EPOCHS + 1):]
        genotypes = [Genotype.load(self.run_dir / r["genotype"]) for r in last]
        return {"alpha_spread_mean": rows[-1].get("alpha_spread_mean") if rows else None,
                "unchanged_last_3_epochs": stable_fraction(genotypes),
                "skip_share": skip_share(genotypes[-1]) if genotypes else None}

    def _note_settledness(self, settled: dict[str, Any]) -> None:
        """Print how settled the search is; say so when α' ended near uniform."""
        spread, stable = settled["alpha_spread_mean"], settled["unchanged_last_3_epochs"]
        if spread is None:
            return
        verdict = "settled" if spread >= SETTLED_SPREAD and (stable or 0) >= 0.9 else "not settled"
        stable_text = f"{100 * stable:.0f}%" if stable is not None else "n/a"
        log(f"search {verdict}: α' spread {spread:.2f} (goal ≥ {SETTLED_SPREAD}), {stable_text} of kept "
            f"edges unchanged over the last 3 epochs (goal ≥ 90%), {100 * settled['skip_share']:.0f}% "
            "skip_connect", self.main)
        if spread < UNSETTLED_SPREAD:
            sc = self.cfg.search
            log(f"note: α' is still near uniform (mean spread {spread:.3f} < {UNSETTLED_SPREAD} between an "
                "edge's most and least likely op): the genotype follows the first trend of the "
                f"architecture gradients, not a converged search. For that, raise search.epochs "
                f"({sc.epochs}), search.max_steps_per_epoch ({sc.max_steps_per_epoch}) or "
                f"search.a_lr ({sc.a_lr:g}).", self.main)

    def _finish(self) -> Path:
        from gasnas import viz  # matplotlib: loaded only when a run plots

        final = self.run_dir / "genotype.json"
        if self.main:
            epoch, row = self.select_final()
            genotype = Genotype.load(self.run_dir / row["genotype"])
            target = self.budget.target_ms
            measured = self.measured_ms(row)
            settled = self.settledness()
            genotype.provenance.update(selected_epoch=epoch, search_epochs=self.cfg.search.epochs,
                                       measured_latency_ms=measured, relaxation=self.cfg.search.relaxation,
                                       alpha_spread_mean=row.get("alpha_spread_mean"),
                                       unchanged_last_3_epochs=settled["unchanged_last_3_epochs"])
            self._note_settledness(settled)
            if self.cfg.latency.loss == "target" and target:
                basis = measured if measured is not None else genotype.predicted_latency_ms
                genotype.provenance["within_target"] = abs(basis - target) <= TARGET_TOLERANCE * target
            genotype.save(final)
            safe_plot(viz.plot_genotype, genotype, self.run_dir / "plots" / "genotype.png")
            ms = f"{measured:.2f} ms measured" if measured is not None else "not measured"
            log(f"genotype: {final} (epoch {epoch}; {genotype.predicted_latency_ms:.2f} ms predicted, "
                f"{ms}, on {self.cfg.latency.device} at {self.cfg.latency.input_size[0]}x"
                f"{self.cfg.latency.input_size[1]})", True)
        D.barrier(self.info)
        return final


def prepare_run_dir(cfg: Config, resume: str | Path | None, rt: Runtime) -> tuple[Path, dict[str, Any] | None]:
    """The run folder and the checkpoint to resume from (None for a fresh run)."""
    if resume is not None:
        run_dir = Path(resume)
        ck = ckpt_io.load(ckpt_io.resume_file(run_dir, CHECKPOINT), "search")
    else:
        run_dir = cfg.run_dir
        if (run_dir / CHECKPOINT).is_file():
            raise GasnasError(f"{run_dir} already holds a search: resume it with --resume {run_dir}, "
                              "or start another with --set name=NEW_NAME")
        ck = None
    if rt.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.dump())
    D.barrier(rt.dist)
    return run_dir, ck


def calm_reference(run_dir: str | Path) -> tuple[Any, float]:
    """A finished search's latency reference: (the reference, a genotype or a PeerReference, and
    its calmest timing in ms over the whole search), from the run's last checkpoint. Re-measurements that use the
    same reference start from that timing, so a report that happens to run in a slow phase
    stays on the search's scale (latency/isolated.py)."""

    path = Path(run_dir) / CHECKPOINT
    state = ckpt_io.load(path, "search").get("calm_latency") or {}
    if state.get("reference") is None:
        raise GasnasError(f"{path}: the search measured no derived net (search.measure_isolated off?)")
    return reference_from_dict(state["reference"], f"{path}: calm_latency.reference"), float(state["reference_calm_ms"])


def with_target(cfg: Config, target_ms: float | None, target_ratio: float | None = None) -> Config:
    """`--target-ms T` / `--target-ratio R`: hinge loss toward T (or R × the reference peer's
    measured latency), λ adapted from the measured latency. Either one replaces the other."""
    if target_ms is not None and target_ratio is not None:
        raise GasnasError("--target-ms and --target-ratio: give one budget, not both")
    if target_ms is not None:
        if target_ms <= 0:
            raise GasnasError(f"--target-ms {target_ms}: expected a positive number of milliseconds")
        return replace(cfg, latency=replace(cfg.latency, loss="target", target_ms=float(target_ms), target_ratio=None))
    if target_ratio is not None:
        if target_ratio <= 0:
            raise GasnasError(f"--target-ratio {target_ratio}: expected a positive fraction of the peer's latency")
        return replace(cfg, latency=replace(cfg.latency, loss="target", target_ms=None, target_ratio=float(target_ratio)))
    return cfg


def run_search(cfg: Config, resume: str | Path | None = None, *, ckpt_every_steps: int = 0,
               show_progress: bool = True) -> Path:
    """Search an architecture; returns the path of the final genotype.json.

    `resume`: a run folder whose checkpoints/last.pt continues where it stopped (the run's
    config should be the one it was started with). `ckpt_every_steps` > 0 also checkpoints
    every that many steps (always at each epoch end). Under torchrun it runs data-parallel.
    """

    rt = setup(cfg)
    run_dir, ck = prepare_run_dir(cfg, resume, rt)
    search = SearchRun(cfg, rt, run_dir, ck, ckpt_every_steps, show_progress)
    return search.run()
