"""Samplers whose order is a pure function of (seed, epoch).

Because nothing in the order depends on RNG state consumed elsewhere, a resumed run can jump to
any position of any epoch by index (accelerate's `skip_first_batches` walks indices only, no data
is loaded), and two runs that differ only in where they were interrupted see the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Random (or sequential, or length-grouped) order over `length` rows, reseeded every epoch.

    Args:
        length: Number of rows.
        seed: Base seed; epoch `e` uses `seed + e`.
        shuffle: False gives 0..length-1.
        lengths: Row lengths; when given, rows of similar length are batched together (the
            order is still random, mega-batches of 50 batches are sorted by length).
        batch_size: Used with `lengths` to form the groups.
    """

    def __init__(
        self,
        length: int,
        seed: int,
        *,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = lengths
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.lengths is not None:
            from transformers.trainer_pt_utils import get_length_grouped_indices

            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        return iter(torch.randperm(self.length, generator=generator).tolist())
