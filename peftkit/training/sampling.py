"""Batches: the seeded, length-grouped global batches every process splits alike, and the
DataLoaders built on them."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import TrainConfig


class GlobalBatchSampler:
    """Global batches (of ``batch_size`` = per-process size x processes), deterministic per epoch.

    Training: a seeded permutation; with ``group_by_length``, chunks of 50 batches are sorted by
    length so that each batch holds similar lengths (less padding), the batch order is then
    shuffled and the longest batch goes first (an out-of-memory shows at once).
    Evaluation (``shuffle=False``): sorted by length, longest first. Accelerate splits each
    global batch across processes.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        *,
        shuffle: bool,
        group_by_length: bool = True,
        seed: int = 0,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.drop_last = False
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        """Set the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i : i + size].tolist() for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if not self.group_by_length:
            return [order[i : i + size].tolist() for i in range(0, n, size)]
        chunk = size * 50
        grouped = np.concatenate(
            [
                c[np.argsort(-self.lengths[c], kind="stable")]
                for c in np.array_split(order, range(chunk, n, chunk))
            ]
        )
        batches = [grouped[i : i + size].tolist() for i in range(0, n, size)]
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < size else (batches, [])
        full = [full[i] for i in rng.permutation(len(full))]
        if full:
            longest = max(range(len(full)), key=lambda i: self.lengths[full[i]].max())
            full.insert(0, full.pop(longest))
        return full + last

    def __iter__(self):
        yield from self._batches()


def input_lengths(dataset) -> list[int]:
    """Each prepared example's length in tokens (what the sampler groups and sorts by)."""
    column = "input_ids" if "input_ids" in dataset.column_names else dataset.column_names[0]
    return [len(x) if hasattr(x, "__len__") else 1 for x in dataset[column]]


def make_loader(dataset, collate, batch_size: int, *, shuffle: bool, config: TrainConfig) -> DataLoader:
    """A DataLoader of global batches (`GlobalBatchSampler`); Accelerate splits each across processes."""
    sampler = GlobalBatchSampler(
        input_lengths(dataset),
        batch_size,
        shuffle=shuffle,
        group_by_length=config.group_by_length,
        seed=config.seed,
    )
    # A private generator: making an iterator must not draw from the global RNG (dropout's), so
    # a resumed run sees the same random numbers as an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=generator)
