"""Samplers whose order is a pure function of (seed, epoch).

Because nothing in the order depends on RNG state consumed elsewhere, a resumed run can jump to
any position of any epoch by index (accelerate's `skip_first_batches` walks indices only, no data
is loaded), and two runs that differ only in where they were interrupted see the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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


class IndexedDataset(torch.utils.data.Dataset):
    """Yield `(index, row)` so the collator knows which rows it is batching.

    Keeps `datasets.Dataset`'s batched `__getitems__` fast path.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        getitems = getattr(self.dataset, "__getitems__", None)
        rows = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return list(zip(indices, rows))


class SeededCollate:
    """Run a collator with the torch RNG seeded from the batch's row indices.

    Collators that draw random numbers (masked-LM masking, span corruption) then give the same
    batch for the same rows whatever happened before: Accelerate collates one batch ahead, so
    drawing from the global RNG would make a resumed run differ from an uninterrupted one. It
    also keeps collation from shifting the model's own RNG stream (dropout).
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any], seed: int) -> None:
        self.collate_fn = collate_fn
        self.seed = seed

    def __call__(self, items: list[tuple[int, Any]]) -> Any:
        indices = [index for index, _ in items]
        # a stable 63-bit hash of (seed, indices); Python's hash() is salted per process
        digest = hashlib.blake2b(repr((self.seed, indices)).encode(), digest_size=8).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest, "little") >> 1)
            return self.collate_fn([row for _, row in items])
