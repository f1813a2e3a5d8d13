"""Data order that can be resumed mid-epoch and sharded across processes.

Everything about which image comes when, and how it is augmented, is a pure function of
(seed, stream, epoch, position):

- `EpochBatches` permutes a fixed list of dataset indices with a generator seeded from
  (seed, stream, epoch), cuts it into GLOBAL batches (incomplete last batch dropped), hands
  process `rank` its contiguous slice of each batch, and can start at any step of the epoch
  (resume). It is the DistributedSampler equivalent, without padding.
- Each item also carries its own seed; `SeededSamples` seeds python/numpy/torch with it just
  for the duration of that one `dataset[index]` call (restoring the caller's RNG state), so an
  image gets the same random crop/flip/scale whatever the process count, the number of loader
  workers, or where the run was resumed.

A stream number keeps different uses (weight split, architecture split, training) apart.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from gasnas.errors import GasnasError


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class SeededSamples(Dataset):
    """dataset[(index, seed)] = dataset[index] computed with every global RNG seeded by `seed`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed & 0xFFFFFFFF)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """This process's share of each global batch of one epoch, from `start_step` on."""

    def __init__(self, indices: Sequence[int], global_batch: int, seed: int, stream: int = 0,
                 rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        if global_batch % world:
            raise GasnasError(f"batch size {global_batch} is not divisible by the {world} processes")
        self.indices = [int(i) for i in indices]
        self.global_batch, self.seed, self.stream = global_batch, seed, stream
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.epoch, self.start_step, self.limit = 0, 0, None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.indices) // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0, limit: int | None = None) -> None:
        """Serve steps start_step .. min(limit, batches_per_epoch) - 1 of `epoch`."""
        self.epoch, self.start_step, self.limit = epoch, start_step, limit

    def _stop(self) -> int:
        n = self.batches_per_epoch
        return n if self.limit is None else min(n, self.limit)

    def __len__(self) -> int:
        return max(0, self._stop() - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = list(self.indices)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.stream, self.epoch))
            order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
        per_rank = self.global_batch // self.world
        for step in range(self.start_step, self._stop()):
            first = step * self.global_batch + self.rank * per_rank
            yield [(order[first + j], mix_seed(self.seed, self.stream, self.epoch, first + j))
                   for j in range(per_rank)]


def batch_loader(dataset: Dataset, sampler: EpochBatches, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader over `sampler`'s batches. It gets its own generator so that creating an
    iterator never draws from the global torch RNG (that would break exact resume)."""
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))


def eval_loader(dataset: Dataset, rank: int = 0, world: int = 1, workers: int = 0,
                batch_size: int = 1) -> DataLoader:
    """Sequential loader over this process's shard (indices rank, rank+W, …; no padding, so
    summing confusion matrices over processes counts every image exactly once)."""
    subset = Subset(dataset, list(range(rank, len(dataset), world)))  # type: ignore[arg-type]
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))


def split_indices(n: int, seed: int) -> tuple[list[int], list[int]]:
    """The search's 50/50 split of n training images: (weight split, architecture split),
    deterministic from the seed."""
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5EA4C4))
    perm = torch.randperm(n, generator=g).tolist()
    half = n // 2
    return sorted(perm[:half]), sorted(perm[half:])
