"""The DataLoaders a `Trainer` reads: seeded, resumable training batches and plain evaluation batches.

A map-style training set is read through `EpochSampler` (a seeded permutation per epoch, or length
groups) and `SeededCollate` (a collator's randomness seeded per batch), so a resumed run sees the
same batches; an `IterableDataset` is read as it streams.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from .errors import ConfigError, DataError, one_line
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


def check_trainer_arguments(
    model: Any, train_dataset: Any, eval_dataset: Any, optimizers: Any, data_collator: Any = None
) -> None:
    """What `Trainer.__init__` checks first: each argument of a kind the loop can use.

    Taken as transformers' Trainer takes them: a torch module (a PeftModel too) or None (with
    model_init); datasets that are torch or Hugging Face datasets (map-style or iterable) or lists of
    rows, eval_dataset also a dict of them; optimizers a pair of an optimizer or None and a scheduler
    or None. Without a `data_collator` the rows of a list must be mappings (or dataclasses), which the
    default collators need; a collator of one's own may take any rows.

    Raises:
        ConfigError: `model` is not a torch module, or `optimizers` is not such a pair.
        DataError: a dataset is a path, a dict of splits or columns, not a dataset at all, or a list
            with a row the default collator can't batch.
    """
    if model is not None and not isinstance(model, nn.Module):
        fix = (
            "load it first, e.g. AutoModelForCausalLM.from_pretrained(...)"
            if isinstance(model, (str, os.PathLike))
            else "pass a torch.nn.Module (e.g. a transformers model), or model_init=..."
        )
        raise ConfigError(
            f"Trainer(model={one_line(model)}): type {type(model).__name__} is not a torch.nn.Module; {fix}"
        )
    _check_dataset("train_dataset", train_dataset, data_collator)
    if isinstance(eval_dataset, Mapping) and not _is_dataset(eval_dataset):  # named eval sets (a DatasetDict too)
        for name, dataset in eval_dataset.items():
            _check_dataset(f"eval_dataset[{name!r}]", dataset, data_collator)
    else:
        _check_dataset("eval_dataset", eval_dataset, data_collator)
    _check_optimizers(optimizers)


def _is_dataset(value: Any) -> bool:
    """Map-style (rows by index) or iterable, and not a dict of splits or columns."""
    if isinstance(value, Mapping) or isinstance(value, (str, bytes, os.PathLike)):
        return False
    return (hasattr(value, "__getitem__") and hasattr(value, "__len__")) or hasattr(value, "__iter__")


def _check_dataset(name: str, dataset: Any, data_collator: Any) -> None:
    if dataset is None:
        return
    if isinstance(dataset, (str, os.PathLike)):
        raise DataError(
            f"{name}={one_line(dataset)} is a path, not a dataset; load it first: "
            "trainformers.data.load_source(path) or datasets.load_dataset(...)"
        )
    if isinstance(dataset, Mapping):
        splits = [key for key, value in dataset.items() if hasattr(value, "column_names")]
        if splits:
            raise DataError(f"{name} is a dict of splits {list(dataset)}; pass one split, e.g. dataset[{splits[0]!r}]")
        raise DataError(
            f"{name} is a dict (keys {one_line(list(dataset))}), not a dataset; for columns use "
            "datasets.Dataset.from_dict(...)"
        )
    if not _is_dataset(dataset):
        raise DataError(
            f"{name}={one_line(dataset)}: type {type(dataset).__name__} is not a dataset; pass a torch Dataset, "
            "a datasets.Dataset or a list of dicts"
        )
    if data_collator is None and isinstance(dataset, (list, tuple)):
        bad = next((i for i, row in enumerate(dataset) if not _is_row(row)), None)
        if bad is not None:
            row = dataset[bad]
            raise DataError(
                f"{name}[{bad}]={one_line(row)}: type {type(row).__name__} is not a row of features; tokenize first "
                "(rows like {'input_ids': [...]}), or pass a data_collator that takes such rows"
            )


def _is_row(row: Any) -> bool:
    return isinstance(row, Mapping) or (dataclasses.is_dataclass(row) and not isinstance(row, type))


def _check_optimizers(optimizers: Any) -> None:
    if not isinstance(optimizers, (tuple, list)) or len(optimizers) != 2:
        raise ConfigError(
            f"Trainer(optimizers={one_line(optimizers)}) must be a pair (optimizer, lr_scheduler), either one "
            "None; e.g. optimizers=(torch.optim.AdamW(model.parameters()), None)"
        )
    optimizer, scheduler = optimizers
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        if not all(hasattr(optimizer, name) for name in ("step", "zero_grad", "param_groups")):
            raise ConfigError(
                f"Trainer(optimizers=({one_line(optimizer)}, ...)): type {type(optimizer).__name__} is not a "
                "torch.optim.Optimizer; pass one built on model.parameters(), or None to let the Trainer build it"
            )
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise ConfigError(
            f"Trainer(optimizers=(..., {one_line(scheduler)})): type {type(scheduler).__name__} is not a learning-rate "
            "scheduler (it has no step()); pass a torch.optim.lr_scheduler one, or None to let the Trainer build it"
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
