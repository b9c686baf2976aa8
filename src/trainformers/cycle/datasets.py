"""The unpaired and paired datasets of a cycle run: plain lists as datasets, columns, rows by index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .models import other


def as_dataset(data: Any, column: str) -> Any:
    """A plain list of strings becomes a one-column `datasets.Dataset`; anything else is kept."""
    if isinstance(data, (list, tuple)) and data and all(isinstance(t, str) for t in data):
        from datasets import Dataset

        return Dataset.from_dict({column: list(data)})
    return data


def columns(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, Mapping):
        raise DataError(f"a DatasetDict was given where one split is needed; pass e.g. dataset['{next(iter(names))}']")
    return list(names) if names is not None else None


def get_rows(dataset: Any, indices: Sequence[int]) -> list[Any]:
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return list(getitems(list(indices)))
    return [dataset[i] for i in indices]


def check_datasets(
    args: Any,
    train_datasets: Mapping[str, Any],
    eval_datasets: Mapping[str, Any],
    paired_dataset: Any,
    paired_eval_dataset: Any,
    collators: Mapping[str, Any],
    needed_domains: Sequence[str],
) -> None:
    """Every dataset a cycle run needs is there, has its columns and rows, and fits the settings.

    Raises:
        DataError / ConfigError: one line naming the dataset or setting and the fix.
    """
    given = {s: d for s, d in train_datasets.items() if d is not None}
    if given:
        for domain in needed_domains:
            if train_datasets[domain] is None:
                trainer = other(domain)
                raise DataError(
                    f"train_dataset_{domain} is missing: model {trainer} trains on real domain-{domain} texts "
                    f"(cycle_directions={args.cycle_directions!r}); pass train_dataset_{domain}=..."
                )
    for kind, sets in (("train", train_datasets), ("eval", eval_datasets)):
        for s, ds in sets.items():
            if ds is None or collators[s] is not None:
                continue
            cols, field_name = columns(ds), getattr(args, f"text_field_{s}")
            if cols is not None and field_name not in cols and "input_ids" not in cols:
                raise DataError(
                    f"{kind}_dataset_{s} has no column '{field_name}' (columns {cols}); set text_field_{s}=, "
                    f"tokenize it to input_ids, or pass data_collator_{s}"
                )
            if hasattr(ds, "__len__") and len(ds) == 0:
                raise DataError(f"{kind}_dataset_{s} is empty (0 rows)")
    for name, ds in (("paired_dataset", paired_dataset), ("paired_eval_dataset", paired_eval_dataset)):
        cols = columns(ds) if ds is not None else None
        if cols is not None:
            missing = [c for c in (args.paired_field_A, args.paired_field_B) if c not in cols]
            if missing:
                raise DataError(
                    f"{name} lacks column(s) {missing} (columns {cols}); set paired_field_A / paired_field_B"
                )
    if (args.warmup_paired_steps or args.paired_mix_every) and paired_dataset is None:
        raise ConfigError(
            f"warmup_paired_steps={args.warmup_paired_steps} / paired_mix_every={args.paired_mix_every} need "
            "paired_dataset=...; pass it or set both to 0"
        )
    if args.metrics and paired_eval_dataset is None:
        raise ConfigError(f"metrics={args.metrics} need paired references: pass paired_eval_dataset=...")
    if args.eval_strategy != "no" and not (any(eval_datasets.values()) or paired_eval_dataset is not None):
        raise DataError(
            f"eval_strategy={args.eval_strategy!r} but there is nothing to evaluate; pass eval_dataset_A/B or "
            "paired_eval_dataset, or set eval_strategy='no'"
        )


def row_texts(rows: list[Any], column: str, tokenizer: Any, collate: Any, collator_name: str) -> list[str]:
    """The texts of domain rows: the collator's output, the text column, or decoded input_ids.

    Raises:
        DataError: the collator returns neither texts nor a dict with input_ids.
    """
    if collate is not None:
        out = collate(rows)
        if isinstance(out, (list, tuple)) and all(isinstance(t, str) for t in out):
            return list(out)
        if isinstance(out, Mapping) and "input_ids" in out:
            ids, mask = out["input_ids"], out.get("attention_mask")
            rows_ids = [
                (row[m.bool()] if mask is not None else row).tolist() if torch.is_tensor(row) else list(row)
                for row, m in zip(ids, mask if mask is not None else ids)
            ]
            return [tokenizer.decode(r, skip_special_tokens=True) for r in rows_ids]
        raise DataError(f"{collator_name} must return a list of texts or a dict with input_ids")
    texts = []
    for row in rows:
        if isinstance(row, str):
            texts.append(row)
        elif column in row:
            texts.append(str(row[column]))
        else:
            texts.append(tokenizer.decode(list(row["input_ids"]), skip_special_tokens=True))
    return texts
