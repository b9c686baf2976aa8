"""The DataLoaders a `Trainer` reads: seeded, resumable training batches and plain evaluation batches.

A map-style training set is read through `EpochSampler` (a seeded permutation per epoch, or length
groups) and `SeededCollate` (a collator's randomness seeded per batch), so a resumed run sees the
same batches; an `IterableDataset` is read as it streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from .errors import DataError
from .loop_utils import row_lengths
from .sampling import EpochSampler, IndexedDataset, SeededCollate

# label columns a model's forward may not name but its loss needs
LABEL_COLUMNS = {"label", "label_ids", "labels"}


def remove_unused_columns(dataset: Any, description: str, keep: set[str]) -> Any:
    """`dataset` without the columns outside `keep` (the forward's parameters and label names).

    Raises:
        DataError: a DatasetDict, or no column the model takes.
    """
    if not hasattr(dataset, "column_names"):
        return dataset
    columns = dataset.column_names
    if isinstance(columns, dict):  # a DatasetDict slipped through
        raise DataError(f"{description} is a DatasetDict; pass one split, e.g. dataset['{next(iter(columns))}']")
    unused = [c for c in columns if c not in keep | LABEL_COLUMNS]
    if unused and len(unused) == len(columns):
        raise DataError(
            f"{description} has no column the model's forward takes (columns {columns}); tokenize it first, "
            "or set remove_unused_columns=False with a collator that builds the inputs"
        )
    return dataset.remove_columns(unused) if unused else dataset


def train_dataloader(dataset: Any, args: Any, collate: Callable, num_processes: int) -> DataLoader:
    """The training DataLoader of `dataset` (not yet prepared by Accelerate).

    Raises:
        DataError: an empty dataset.
    """
    if isinstance(dataset, IterableDataset):
        return make_dataloader(
            dataset, args, args.per_device_train_batch_size, collate, drop_last=args.dataloader_drop_last
        )
    if len(dataset) == 0:
        raise DataError("train_dataset is empty (0 rows); check the data source and any filtering")
    lengths = row_lengths(dataset, args.length_column_name) if args.group_by_length else None
    seed = args.data_seed if args.data_seed is not None else args.seed
    sampler = EpochSampler(
        len(dataset),
        seed,
        shuffle=getattr(args, "train_sampling_strategy", "random") != "sequential",
        lengths=lengths,
        batch_size=args.per_device_train_batch_size * num_processes,
    )
    return make_dataloader(
        IndexedDataset(dataset),
        args,
        args.per_device_train_batch_size,
        SeededCollate(collate, seed),
        sampler=sampler,
        drop_last=args.dataloader_drop_last,
    )


def make_dataloader(
    dataset: Any, args: Any, batch_size: int, collate: Callable, *, sampler: Any = None, drop_last: bool = False
) -> DataLoader:
    """A DataLoader with the `dataloader_*` settings of `args`; worker seeds never draw on the global RNG."""
    workers = args.dataloader_num_workers
    generator = torch.Generator()
    generator.manual_seed(args.seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers and workers > 0,
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        generator=generator,
    )


def check_train_inputs(args: Any, train_dataset: Any, eval_dataset: Any) -> None:
    """What `Trainer.train()` checks before it touches the output directory.

    Raises:
        DataError: no or an empty train_dataset, or evaluations asked for without an eval_dataset.
    """
    if train_dataset is None:
        raise DataError("Trainer.train() needs a train_dataset; pass train_dataset=... to Trainer")
    if hasattr(train_dataset, "__len__") and not isinstance(train_dataset, IterableDataset) and len(train_dataset) == 0:
        raise DataError("train_dataset is empty (0 rows); check the data source and any filtering")
    if args.eval_strategy != "no" and eval_dataset is None:
        raise DataError(
            f"training.eval_strategy='{args.eval_strategy}' but Trainer has no eval_dataset; "
            "pass eval_dataset=... or set eval_strategy='no'"
        )


def named_eval_set(eval_dataset: Any, which: Any) -> Any:
    """The eval set to use: `which` itself (a dataset), the Trainer's set of that name, or the Trainer's own.

    Raises:
        DataError: no eval set, or no set of that name.
    """
    if isinstance(which, str):
        if not isinstance(eval_dataset, dict) or which not in eval_dataset:
            names = sorted(eval_dataset) if isinstance(eval_dataset, dict) else []
            raise DataError(f"evaluate({which!r}): the Trainer has no eval set of that name (its eval sets: {names})")
        return eval_dataset[which]
    dataset = which if which is not None else eval_dataset
    if dataset is None:
        raise DataError("evaluate() needs an eval_dataset; pass eval_dataset=... to Trainer or evaluate()")
    return dataset
