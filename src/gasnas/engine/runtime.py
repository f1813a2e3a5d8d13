"""What every run shares: device, seeds, determinism, stop signals, metrics log, progress bars."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gasnas.engine import checkpoint as ckpt_io
from gasnas.engine import distributed as D
from gasnas.engine.metrics import nan_to_none
from gasnas.errors import GasnasError
from gasnas.fileio import write_text_atomic


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dist: D.DistInfo

    @property
    def main(self) -> bool:
        return self.dist.main


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` (or `auto`: cuda when available). Asking for an absent CUDA is
    a one-line error. A bare `cuda` is cuda:`local_rank`, or without it this process's GPU per
    LOCAL_RANK (distributed.rank_device: one GPU per torchrun rank)."""
    name = (name or "cpu").strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GasnasError(f"device '{name}' requested but CUDA is not available (use --set device=cpu)")
        if ":" in name:
            return torch.device(name)
        return torch.device("cuda", local_rank) if local_rank is not None else D.rank_device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise GasnasError(f"config key 'device': unknown device {name!r} (cpu, cuda, cuda:N, auto)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """deterministic: deterministic algorithms (warn-only: a few CUDA backward kernels have
    none), cuDNN deterministic, no autotuning. Otherwise cuDNN autotuning is on."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def configure_tf32(enabled: bool) -> None:
    """The TF32 policy (config key `tf32`): TF32 for fp32 matmuls and cuDNN convs on CUDA, or
    neither. Set both explicitly: torch's defaults differ (matmul off, cuDNN on), so the fused
    mixed op's matmuls and the plain path's convs would otherwise round differently."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def setup(cfg: Any) -> Runtime:
    """Join the torchrun group (if any), pick the device, seed every RNG, set determinism and
    the TF32 policy."""
    wanted = (cfg.device or "cpu").split(":")[0]
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise GasnasError(f"device '{cfg.device}' requested but CUDA is not available (use --set device=cpu)")
    info = D.init_distributed(wanted)
    if getattr(cfg, "threads", None):
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, info.local_rank if info.enabled else None)
    seed_everything(cfg.seed)
    configure_determinism(cfg.deterministic)
    configure_tf32(bool(getattr(cfg, "tf32", False)))
    return Runtime(device, info)


# --------------------------------------------------------------------------- stopping


class RunInterrupted(Exception):
    """Ctrl-C / SIGTERM was honoured at a step boundary and a checkpoint saved at `path`."""

    def __init__(self, path: Path, where: str, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted at {where}; checkpoint saved to {path}")
        self.path, self.where, self.signum = path, where, signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopSignal:
    """Context manager: the first SIGINT/SIGTERM only sets `.requested` (the loop saves a
    checkpoint at the next step boundary and stops); a second SIGINT interrupts at once.
    Outside the main thread it does nothing (signals can only be handled there)."""

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.requested = False
        self.signum = signal.SIGINT
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if self.verbose:
            print(f"\ngasnas: {signal.Signals(signum).name} received: saving a checkpoint at the next "
                  "step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


class EpochLoop:
    """The plumbing a search and a training run share: the epoch loop with its stop signal
    (honoured at a step boundary after a checkpoint), the resumable checkpoint written by the
    main process only, and the resume checks. A run sets `ckpt_path`, `info`, `device`, `main`,
    `run_dir`, `epoch`, `step`, `steps_per_epoch` and gives `checkpoint_state()`,
    `_train_epoch(stop)` and `_end_epoch()` (which advances `epoch` and saves a checkpoint)."""

    ckpt_path: Path
    run_dir: Path
    info: D.DistInfo
    device: torch.device
    main: bool
    epoch: int
    step: int
    steps_per_epoch: int

    def checkpoint_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _train_epoch(self, stop: StopSignal) -> None:
        raise NotImplementedError

    def _end_epoch(self) -> None:
        raise NotImplementedError

    def save_checkpoint(self) -> Path:
        """Write `checkpoint_state()` to `ckpt_path` (atomically, main process); every rank waits."""
        if self.main:
            ckpt_io.save(self.ckpt_path, self.checkpoint_state())
        D.barrier(self.info)
        return self.ckpt_path

    def _check_stop(self, stop: StopSignal) -> None:
        """After a stop was asked for on any rank: save a checkpoint here and stop the run."""
        if D.any_rank(stop.requested, self.info, self.device):
            path = self.save_checkpoint()
            raise RunInterrupted(path, ckpt_io.position_text(self.epoch, self.step), stop.signum)

    def _check_resumable(self, ck: dict[str, Any], why: str = "") -> None:
        """A checkpoint resumes only where an epoch has as many steps as it had."""
        if ck.get("steps_per_epoch") != self.steps_per_epoch:
            raise GasnasError(f"{self.ckpt_path}: {ck.get('steps_per_epoch')} steps per epoch in the "
                              f"checkpoint, {self.steps_per_epoch} with this config{why}")

    def _resumed(self, ck: dict[str, Any]) -> None:
        """Take the checkpoint's position (epoch, step, RNG states) and say so."""
        ckpt_io.restore_position(self, ck)
        log(f"resumed {self.run_dir} at {ckpt_io.position_text(self.epoch, self.step)}", self.main)

    def _run_epochs(self, epochs: int) -> None:
        with StopSignal(verbose=self.main) as stop:
            while self.epoch < epochs:
                self._train_epoch(stop)
                self._end_epoch()
                self._check_stop(stop)


def check_finite(value: float, what: str, epoch: int, step: int, last_good: Path | None) -> None:
    """A NaN/inf loss stops the run with one line naming where; the last checkpoint is kept."""
    if math.isfinite(value):
        return
    kept = f"; last good checkpoint kept: {last_good}" if last_good and last_good.is_file() else \
        "; no checkpoint had been written yet"
    raise GasnasError(f"non-finite {what} ({value}) at epoch {epoch + 1} step {step + 1}{kept}")


# --------------------------------------------------------------------------- logging


class TensorBoardMirror:
    """What metrics.jsonl gets, also as TensorBoard scalars (and the run's figures as images) in
    `log_dir` (config `tensorboard: true`; needs the optional `tensorboard` package, `pip install
    -e ".[tb]"`). Absent, it says so in one line and the run goes on without it."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
        except ImportError:
            log("note: tensorboard: true, but the tensorboard package is not installed "
                '(pip install -e ".[tb]"); metrics go to metrics.jsonl only')
            return
        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, row: dict[str, Any], step: int) -> None:
        """Every number of a metrics row (a list of numbers as key/0, key/1, ...)."""
        if self.writer is None:
            return
        for key, value in row.items():
            values = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
            for i, v in values:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.writer.add_scalar(key if i is None else f"{key}/{i}", v, step)
        self.writer.flush()

    def image(self, tag: str, png: Path, step: int) -> None:
        """A figure the run has just written, as an image at `step`."""
        if self.writer is None or not Path(png).is_file():
            return
        import matplotlib.image

        self.writer.add_image(tag, matplotlib.image.imread(str(png))[..., :3], step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, written by rank 0 only. On resume the rows
    after the checkpoint's epoch are dropped, so the file matches an uninterrupted run. With
    `tensorboard`, each row is mirrored to run_dir/tb (TensorBoardMirror)."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path, self.enabled = Path(path), enabled
        self.tensorboard = TensorBoardMirror(self.path.parent / "tb", enabled and tensorboard)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line after a kill
                    continue
        return out

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        if not self.enabled or not self.path.is_file():
            return
        rows = [r for r in self.rows() if keep(r)]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(nan_to_none(row)) + "\n")
        self.tensorboard.scalars(row, int(row.get("epoch") or 0))


def progress(iterable: Iterable[Any], enabled: bool, **kw: Any) -> Any:
    """tqdm on rank 0 (stderr), a plain iterable elsewhere."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, leave=False, **kw)


def log(message: str, enabled: bool = True) -> None:
    if enabled:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


PLOT_EVERY_S = 60.0


class PlotThrottle:
    """When a run redraws its figures: always when forced (after an evaluation, at the last
    epoch), otherwise at most every `every_s` seconds. Why: a redraw costs 0.3-2 s of
    matplotlib, 5-10% of a short epoch, and metrics.jsonl keeps every epoch anyway."""

    def __init__(self, every_s: float = PLOT_EVERY_S) -> None:
        self.every_s = every_s
        self.last = time.monotonic()

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            return True
        return False


def safe_plot(fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
    """Draw a figure; a plotting failure warns instead of ending a long run."""
    try:
        fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - a figure is never worth a failed run
        warnings.warn(f"plot {getattr(fn, '__name__', fn)} failed: {type(exc).__name__}: {exc}", stacklevel=2)


def as_float(t: torch.Tensor | float | None) -> float | None:
    if t is None:
        return None
    return float(t.detach().item()) if isinstance(t, torch.Tensor) else float(t)
