"""Samplers whose order is a pure function of (seed, epoch).

Because nothing in the order depends on RNG state consumed elsewhere, a resumed run jumps to any
position of any epoch by index (`skip_first_batches`: no skipped row is fetched or collated, and
the skip costs the same at any position), and two runs that differ only in where they were
interrupted see the same batches. An IterableDataset can't jump: its skipped batches are read and
collated again (Accelerate's `skip_first_batches`), so its resume time grows with the position.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from accelerate.data_loader import BatchSamplerShard, DataLoaderShard, SkipBatchSampler
from torch.utils.data import BatchSampler, Sampler


class EpochSampler(Sampler[int]):
    """Random (or sequential, or length-grouped) order over `length` rows, reseeded every epoch.

    Args:
        length: Number of rows.
        seed: Base seed; epoch `e` uses `seed + e`.
        shuffle: False gives 0..length-1.
        lengths: Row lengths; when given, rows of similar length are batched together (the
            order is still random, mega-batches of 50 batches are sorted by length).
        batch_size: Used with `lengths` to form the groups.

    `jumped` gives a copy that starts mid-epoch, for a resumed run.
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
        self.start = 0  # see `jumped`
        self.keep_first = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def jumped(self, start: int, keep_first: int = 0) -> EpochSampler:
        """A copy yielding the epoch's first `keep_first` rows, then its order from position `start` on.

        The order is still computed whole (one `randperm`), so the jump costs nothing per skipped
        row. `keep_first` (at most `start`) serves Accelerate's `BatchSamplerShard`, which fills an
        uneven last round of batches with the first rows it saw: they must be the epoch's own.
        """
        if not 0 <= keep_first <= start:
            raise ValueError(f"jumped(start={start}, keep_first={keep_first}): need 0 <= keep_first <= start")
        sampler = copy.copy(self)
        sampler.start, sampler.keep_first = start, keep_first
        return sampler

    def __len__(self) -> int:
        head = min(self.keep_first, self.length)
        return head + max(0, self.length - max(self.start, head))

    def __iter__(self) -> Iterator[int]:
        head, start = self.keep_first, self.start
        if not self.shuffle:
            return itertools.chain(range(min(head, self.length)), range(max(start, head), self.length))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.lengths is not None:
            from transformers.trainer_pt_utils import get_length_grouped_indices

            order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
            return iter(order[:head] + order[start:] if start else order)
        order = torch.randperm(self.length, generator=generator)
        return iter((torch.cat([order[:head], order[start:]]) if start else order).tolist())


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
            torch.default_generator.manual_seed(
                int.from_bytes(digest, "little") >> 1
            )  # CPU only: torch.manual_seed also walks every accelerator backend (~1 ms)
            return self.collate_fn([row for _, row in items])


def jump_batch_sampler(batch_sampler: Any, num_batches: int) -> tuple[BatchSampler, int] | None:
    """A batch sampler for the batches of `batch_sampler` after its first `num_batches`, by jumping.

    `batch_sampler` is what Accelerate's prepared loader holds: a `BatchSampler` over an
    `EpochSampler`, or a `BatchSamplerShard` dealing such batches to ranks. Returns
    `(sampler, passed)`: after its first `passed` batches (0 or 1, whatever `num_batches` is),
    `sampler` yields exactly what `batch_sampler` yields after `num_batches`, wrap-around of an
    uneven last round included. None when the sampler is of another kind (it can't jump).
    """
    shard = batch_sampler if isinstance(batch_sampler, BatchSamplerShard) else None
    inner = shard.batch_sampler if shard is not None else batch_sampler
    if type(inner) is not BatchSampler or not isinstance(inner.sampler, EpochSampler) or num_batches <= 0:
        return None
    size = inner.batch_size
    if shard is None:
        return BatchSampler(inner.sampler.jumped(num_batches * size), size, inner.drop_last), 0
    # a rank's batch k is batch k (split_batches: a slice of it) or batch k*world + rank of the
    # epoch. The shard takes its first round (one batch, or one per rank) as filler for an uneven
    # last round, so that round is kept, passed by each rank, and the order jumps past the rest.
    per_round = 1 if shard.split_batches else shard.num_processes
    sampler = inner.sampler.jumped(num_batches * per_round * size, keep_first=per_round * size)
    jumped = BatchSamplerShard(
        BatchSampler(sampler, size, inner.drop_last),
        shard.num_processes,
        shard.process_index,
        split_batches=shard.split_batches,
        even_batches=shard.even_batches,
    )
    return jumped, 1


def skip_first_batches(accel: Any, dataloader: Any, num_batches: int) -> Any:
    """The prepared training `dataloader` from its `num_batches`-th batch on (this process's count).

    Over an `EpochSampler` the order jumps (`jump_batch_sampler`): no skipped index is walked,
    no skipped row fetched or collated, and the remaining batches are those of an uninterrupted
    epoch on every rank. Other samplers go through Accelerate's `skip_first_batches`, which walks
    the skipped batches' indices (an IterableDataset's skipped batches are loaded and collated).
    """
    jump = jump_batch_sampler(getattr(dataloader, "batch_sampler", None), num_batches)
    if jump is None or not isinstance(dataloader, DataLoaderShard):
        return accel.skip_first_batches(dataloader, num_batches)
    batch_sampler, passed = jump
    # Accelerate's own copy of the loader (device placement, RNG sync, epoch counter), whose
    # SkipBatchSampler then draws from the jumped sampler instead of walking the original
    loader = accel.skip_first_batches(dataloader, passed)
    if not isinstance(getattr(loader, "batch_sampler", None), SkipBatchSampler):
        return accel.skip_first_batches(dataloader, num_batches)  # an Accelerate we don't know: walk
    loader.batch_sampler.batch_sampler = batch_sampler
    return loader
