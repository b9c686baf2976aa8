"""From a `data` section to what the Trainer needs: tokenised datasets and the matching collator.

    source -> load_splits -> (train a tokenizer) -> tokenize_for_pretraining | tokenize_for_instruction
           -> collator (blocks, dynamic padding, or padding-free) -> Trainer / DataLoader

A mixture (`data.sources`) runs the first steps once per source and then mixes (`mixture.py`).

`prepare_data` is what `trainformers train` runs; `create_dataloader` is the one-call Python
entry point for a ready `torch.utils.data.DataLoader`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainformers.config import DataSection
from trainformers.config.mixture import source_sections
from trainformers.data.chat import detect_format, to_messages, tokenize_for_instruction
from trainformers.data.collators import CausalLMCollator, PaddingFreeCollator
from trainformers.data.mixture import Mixture, mix, source_label
from trainformers.data.pretraining import tokenize_for_pretraining
from trainformers.data.sources import check_text_field, dataset_columns, load_splits
from trainformers.data.stats import DataStats
from trainformers.errors import ConfigError


@dataclass
class TrainingData:
    """Tokenised training (and held-out) rows with the collator that batches them.

    `train` and `eval` are `datasets.Dataset` (or `IterableDataset` when streaming) and can be
    given to `Trainer(train_dataset=..., eval_dataset=..., data_collator=collator)` as they are.
    """

    train: Any
    eval: Any
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    padding_free: bool
    stats: list[DataStats] = field(default_factory=list)

    def summary(self) -> str:
        return " | ".join(s.summary() for s in self.stats)


def load_raw(data: DataSection, seed: int | None = None) -> tuple[Any, Any]:
    """The untokenised train and held-out rows of `data.source`, or of each of `data.sources` (a `Mixture`)."""
    seed = data.seed if data.seed is not None else (seed if seed is not None else 42)
    if data.sources is not None:
        sections, weights = zip(*source_sections(data))
        splits = [load_raw(section, seed) for section in sections]
        weighted = list(weights) if weights[0] is not None else None  # on every source or none
        train = Mixture(list(sections), [t for t, _ in splits], weighted, seed, data.stopping_strategy)
        held = [(section, e) for section, (_, e) in zip(sections, splits) if e is not None]
        evaluation = Mixture([s for s, _ in held], [e for _, e in held], None, seed, data.stopping_strategy)
        return train, evaluation if held else None
    return load_splits(
        data.source,
        subset=data.subset,
        split=data.split,
        eval_split=data.eval_split,
        revision=data.revision,
        streaming=data.streaming,
        num_samples=data.num_samples,
        num_eval_samples=data.num_eval_samples,
        validation_split_percentage=data.validation_split_percentage,
        seed=seed,
    )


def raw_texts(dataset: Any, data: DataSection) -> Iterator[str]:
    """The text of every row, for training a tokenizer (instruction rows: their messages' contents)."""
    if isinstance(dataset, Mixture):  # every source's rows once, each read its own way
        for section, part in zip(dataset.sections, dataset.parts):
            yield from raw_texts(part, section)
        return
    if data.training_mode == "pretraining":
        fields = check_text_field(dataset, data.text_field)
        for row in dataset:
            parts = [row[f] for f in fields if isinstance(row.get(f), str) and row[f].strip()]
            if parts:
                yield "\n\n".join(parts)
        return
    columns, _ = dataset_columns(dataset)
    fmt = detect_format(columns) if data.format == "auto" else data.format
    for row in dataset:
        messages = to_messages(
            row, fmt, template=data.template, response_field=data.response_field, system_prompt=data.system_prompt
        )
        if messages:
            yield "\n".join(m["content"] for m in messages)


def make_collator(data: DataSection, tokenizer: Any) -> tuple[Callable, bool]:
    """The collator for `data`'s shape, and whether it is padding-free."""
    padding_free = data.padding_free or (data.training_mode == "instruction" and data.packing)
    if padding_free:
        # bin-packed rows of at most max_length: attention costs rows x L^2, not (all tokens)^2
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return PaddingFreeCollator(max_length=data.max_length, pad_token_id=pad or 0), True
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            "the tokenizer has no pad token, needed to pad batches (a packed run's last row too); "
            "set tokenizer.pad_token (e.g. to its eos_token)"
        )
    collator = CausalLMCollator(  # max_length: full packed blocks are never rounded up past it
        tokenizer.pad_token_id,
        pad_to_multiple_of=data.pad_to_multiple_of,
        padding_side=data.padding_side,
        max_length=data.max_length,
    )
    return collator, False


def tokenize(data: DataSection, tokenizer: Any, dataset: Any, name: str) -> tuple[Any, DataStats]:
    """Tokenise one split the way `data.training_mode` asks."""
    if isinstance(dataset, Mixture):  # each source tokenised as its own data section, then mixed
        parts = zip(dataset.sections, dataset.parts)
        return mix(dataset, [tokenize(s, tokenizer, part, f"{name} {source_label(s)}") for s, part in parts], name)
    if data.training_mode == "pretraining":
        return tokenize_for_pretraining(
            dataset,
            tokenizer,
            text_field=data.text_field,
            max_length=data.max_length,
            packing=data.packing and not data.padding_free,
            padding_free=data.padding_free,
            num_proc=data.num_proc,
            name=name,
        )
    return tokenize_for_instruction(
        dataset,
        tokenizer,
        fmt=data.format,
        max_length=data.max_length,
        template=data.template,
        response_field=data.response_field,
        system_prompt=data.system_prompt,
        train_on_prompt=data.train_on_prompt,
        chat_template=data.chat_template,
        num_proc=data.num_proc,
        name=name,
    )


def prepare_data(
    data: DataSection,
    tokenizer: Any,
    *,
    raw: tuple[Any, Any] | None = None,
    seed: int | None = None,
) -> TrainingData:
    """Load (unless `raw` is given), tokenise and pick the collator for a `data` section.

    Args:
        data: The `data` section (see the README for every field).
        tokenizer: A fast `transformers` tokenizer.
        raw: Already loaded `(train, eval)` rows (e.g. the ones a tokenizer was trained on).
        seed: Seed for the held-out split when `data.seed` is unset.

    Returns:
        The datasets, collator and per-split statistics (each logged once).
    """
    train_raw, eval_raw = raw if raw is not None else load_raw(data, seed)
    train, train_stats = tokenize(data, tokenizer, train_raw, "train")
    stats = [train_stats]
    evaluation = None
    if eval_raw is not None:
        evaluation, eval_stats = tokenize(data, tokenizer, eval_raw, "eval")
        stats.append(eval_stats)
    for s in stats:
        s.log()
    collator, padding_free = make_collator(data, tokenizer)
    return TrainingData(train, evaluation, collator, padding_free, stats)


def create_dataloader(
    dataset_name: Any = None,
    *,
    tokenizer: Any,
    batch_size: int = 8,
    max_length: int = 128,
    split: str = "train",
    subset: str | None = None,
    text_field: str | list[str] = "text",
    training_mode: str = "pretraining",
    num_workers: int = 0,
    shuffle: bool = True,
    num_samples: int | None = None,
    seed: int = 42,
    **data_options: Any,
) -> Any:
    """A ready `DataLoader` over any source, in one call.

    Args:
        dataset_name: Anything `data.source` accepts: a Hub name, a local file/glob/directory, an
            in-memory `datasets.Dataset`; None is the embedded corpus.
        tokenizer: A fast `transformers` tokenizer.
        batch_size: Rows per batch (documents per batch when padding-free).
        max_length: Block length (packing) or truncation length.
        split, subset, text_field, training_mode, num_samples: As in the `data` section.
        num_workers: DataLoader worker processes.
        shuffle: Shuffle rows (seeded with `seed`); streams are read in order.
        seed: Seed for shuffling.
        **data_options: Any other `data` section field (packing, padding_free, format, ...).

    Returns:
        A `torch.utils.data.DataLoader` yielding dicts of tensors with `labels`.

    Example:
        >>> loader = create_dataloader("corpus.jsonl", tokenizer=tok, batch_size=16, max_length=256)
    """
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    unknown = set(data_options) - {f.name for f in dataclasses.fields(DataSection)}
    if unknown:
        raise ConfigError(f"create_dataloader got unknown options {sorted(unknown)}; see the data section fields")
    if data_options.get("sources") is not None:
        raise ConfigError(
            "create_dataloader reads one source; for a mixture use prepare_data(DataSection(sources=...))"
        )
    data = DataSection(
        source=None,
        split=split,
        subset=subset,
        text_field=text_field,
        training_mode=training_mode,
        max_length=max_length,
        num_samples=num_samples,
        validation_split_percentage=0,
        **data_options,
    )
    raw = load_splits(
        dataset_name,
        subset=subset,
        split=split,
        streaming=data.streaming,
        num_samples=num_samples,
        validation_split_percentage=0,
        seed=seed,
    )
    prepared = prepare_data(data, tokenizer, raw=raw, seed=seed)
    dataset = prepared.train
    streaming = isinstance(dataset, IterableDataset)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and not streaming,
        collate_fn=prepared.collator,
        num_workers=num_workers,
        generator=generator,
    )
