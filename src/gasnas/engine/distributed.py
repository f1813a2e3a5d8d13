"""Data parallelism for `gasnas search` and `gasnas train`, launched by torchrun.

One machine, N processes (one per GPU, or N CPU processes with gloo)::

    torchrun --nproc-per-node 4 -m gasnas search --config cityscapes --set device=cuda
    torchrun --nproc-per-node 4 -m gasnas train --genotype runs/cityscapes/genotype.json \\
        --config cityscapes --set device=cuda

Several machines (run the same line on every node, changing only --node-rank)::

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --master-addr node0.example --master-port 29500 \\
        -m gasnas search --config cityscapes --set device=cuda

`search.batch_size` / `train.batch_size` are the GLOBAL batch: each of the W processes takes
batch/W images of every batch (it must divide), so a run on W processes follows the same data
order, learning-rate schedule and number of steps as one process with the same batch.

What is synchronised (and why not DistributedDataParallel): after every backward the
gradients of the parameters being updated (the weights in a weight step; α and the GGM in an
architecture step) are summed across processes with one flat `all_reduce` and divided by W.
DDP's reducer assumes one parameter set per backward and would complain about the parameter
group that a given step leaves unused. The losses are normalised by the GLOBAL number of
labelled pixels, so the averaged gradient is exactly the one-process gradient. BatchNorm
statistics are computed over the global batch (`convert_batchnorm`): on nccl with
`nn.SyncBatchNorm` (CUDA kernels that reduce the statistics in one collective per layer), on
gloo with `GlobalBatchNorm2d` (works on CPU, unlike `nn.SyncBatchNorm`); both give the gradient
of the global-batch BatchNorm and keep BatchNorm2d's parameters and state_dict. Rank 0 alone
writes files, logs and progress bars. Backend: nccl on CUDA, gloo on CPU; each process runs on
`rank_device` (cuda:LOCAL_RANK on CUDA).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (world 1 = a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int | None:
    """LOCAL_RANK as torchrun sets it (this process's index on its machine), or None."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value not in (None, "") else None


def rank_device(device_type: str) -> torch.device:
    """This process's device: cuda:LOCAL_RANK when CUDA is asked for and present (cuda:0 without
    LOCAL_RANK), so each rank of a torchrun job runs on its own local GPU; cpu otherwise."""
    if device_type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", env_local_rank() or 0)
    return torch.device("cpu")


def backend_for(device_type: str) -> str:
    """The process-group backend for a device type: nccl on CUDA, gloo on CPU."""
    return "nccl" if device_type == "cuda" else "gloo"


def init_distributed(device_type: str = "cpu", timeout_minutes: float = 120.0) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).

    Reuses a group that is already initialised (e.g. by a test harness).
    """
    if tdist.is_available() and tdist.is_initialized():
        return DistInfo(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    backend = backend_for(device_type)
    local_rank = env_local_rank() or 0
    if device_type == "cuda":
        torch.cuda.set_device(rank_device(device_type))
    tdist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), local_rank)


def current() -> DistInfo:
    """The DistInfo of an already-initialised group (or the single-process one)."""
    if tdist.is_available() and tdist.is_initialized():
        return DistInfo(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over processes; returns `t` (unchanged for one process)."""
    if info.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def global_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over processes of a (detached) tensor; a copy, the input is left alone."""
    t = t.detach().clone()
    if info.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        t /= info.world
    return t


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (e.g. a latency measured on rank 0 only)."""
    if not info.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """True on every rank if it is true on at least one (e.g. 'stop requested')."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return bool(t.item() > 0)


def average_gradients(params: Iterable[nn.Parameter], info: DistInfo) -> None:
    """Replace each .grad by its mean over processes (one flat all_reduce).

    Parameters without a gradient are skipped; every rank runs the same graph, so the set is
    the same everywhere.
    """
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= info.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the batch of every process.

    Same parameters, buffers and state_dict as `nn.BatchNorm2d` (checkpoints are
    interchangeable). Each process computes its own mean and variance (torch.var_mean, as
    accurate as plain BatchNorm); one differentiable all_reduce gathers (count, mean, M2) of
    every process and Chan's parallel formula combines them, so there is no E[x²] − E[x]²
    cancellation. The all_reduce's backward all-reduces the gradient, so the gradients are those
    of BatchNorm over the global batch. Works with gloo on CPU as well as nccl. Outside training,
    or in a single process, it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and tdist.is_available() and tdist.is_initialized()
                and tdist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

        world, rank = tdist.get_world_size(), tdist.get_rank()
        c = x.shape[1]
        xf = x.float()
        var_r, mean_r = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
        n_r = float(x.numel() // c)
        # slot r of a [world, 2C+1] table holds this process's (mean, M2, n); the sum gathers all
        mine = torch.cat([mean_r, var_r * n_r, xf.new_full((1,), n_r)])
        table = torch.zeros(world, 2 * c + 1, dtype=xf.dtype, device=x.device)
        table = table.index_copy(0, torch.tensor([rank], device=x.device), mine.unsqueeze(0))
        table = differentiable_all_reduce(table)
        means, m2s, ns = table[:, :c], table[:, c:2 * c], table[:, 2 * c:]
        n = ns.sum()
        mean = (ns * means).sum(0) / n
        var = ((m2s + ns * (means - mean) ** 2).sum(0) / n).clamp(min=0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var.detach() * n.detach() / (n.detach() - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm2d of `module` a GlobalBatchNorm2d in place (same parameter objects)."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return module


def batchnorm_converter(backend: str) -> Callable[[nn.Module], nn.Module]:
    """How BatchNorm gets global statistics on `backend`: nn.SyncBatchNorm on nccl (its CUDA
    kernels; GlobalBatchNorm2d's two differentiable all-reduces per layer are latency-bound
    there), GlobalBatchNorm2d elsewhere (gloo: nn.SyncBatchNorm does not run on CPU)."""
    if backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm
    return sync_batchnorm


def convert_batchnorm(module: nn.Module, backend: str | None = None) -> nn.Module:
    """`module` with global-batch BatchNorm for `backend` (default: the initialised group's).
    Use the returned module (SyncBatchNorm conversion replaces a top-level BatchNorm); the
    parameter objects are kept, so optimizers may be built before or after."""
    if backend is None:
        backend = str(tdist.get_backend()) if tdist.is_available() and tdist.is_initialized() else "gloo"
    return batchnorm_converter(backend)(module)


def unsync_batchnorm(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if type(m) is GlobalBatchNorm2d:
            m.__class__ = nn.BatchNorm2d
    return module

