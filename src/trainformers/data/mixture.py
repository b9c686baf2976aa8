"""A mixture of data sources (`data.sources`): each source read and tokenised on its own, then mixed.

Each entry of `data.sources` is a data section of its own (`config.mixture.source_sections`), so a
source is loaded, held out and tokenised exactly as a single `data.source` is, with its own split,
format, text_field or template; after that every source has the same columns. `mix` then builds
the training rows:

- with weights: `datasets.interleave_datasets` draws each row (a block when packing) from source i
  with probability weight_i / sum(weights), seeded with `data.seed`, until `data.stopping_strategy`
  says stop: `all_exhausted` (every source read at least once; the smaller shares repeat) or
  `first_exhausted` (one source ran out; the rest of the others is not used);
- without: every source's rows, one source after the other (the Trainer shuffles them each epoch).

Held-out rows stay each source's own (its eval_split, or its share carved before mixing, so a
repeated row never lands on both sides) and are all used, unweighted. The mixture is a function of
the data and the seed alone: a resumed run rebuilds the same rows and skips to its position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc

from trainformers.data.stats import DataStats

__all__ = ["Mixture", "mix", "source_label"]


@dataclass
class Mixture:
    """The rows of each source of `data.sources`, with the data section that reads them.

    Attributes:
        sections: One `DataSection` per source (its entry's keys over the data section's).
        parts: Each source's rows (a `Dataset`, or an `IterableDataset` when streaming).
        weights: Each source's weight, or None: every row of every source, one after the other.
        seed: Seed of the weighted draw.
        stopping_strategy: When the weighted draw stops (`interleave_datasets`' argument).
    """

    sections: list[Any]
    parts: list[Any]
    weights: list[float] | None
    seed: int
    stopping_strategy: str


def source_label(section: Any) -> str:
    """How a source is named in the summary: its path or name, subset and split."""
    source = section.source
    if isinstance(source, (list, tuple)):
        label = f"{source[0]} (+{len(source) - 1} files)" if len(source) > 1 else str(source[0])
    else:
        label = "the embedded corpus" if source is None else str(source)
    return (
        label
        + (f":{section.subset}" if section.subset else "")
        + (f"[{section.split}]" if section.split != "train" else "")
    )


def mix(mixture: Mixture, tokenized: list[tuple[Any, DataStats]], name: str) -> tuple[Any, DataStats]:
    """The mixture's rows from its sources' tokenised rows, and what it drew from each.

    Args:
        mixture: The sources, their weights, seed and stopping strategy.
        tokenized: Each source's `(rows, stats)`, in the order of `mixture.parts`.
        name: The split's name in the stats ("train", "eval").

    Returns:
        The mixed rows and their stats: the sources' counts added up, the rows and tokens drawn,
        and a note with each source's rows and share.
    """
    parts = [rows for rows, _ in tokenized]
    stats = DataStats(name=name)
    for _, source_stats in tokenized:
        stats.merge(source_stats)
    labels = [source_label(section) for section in mixture.sections]
    how = "" if mixture.weights is None else f" by weight ({mixture.stopping_strategy}, seed {mixture.seed})"
    if isinstance(parts[0], datasets.IterableDataset):
        if mixture.weights is None:
            return datasets.concatenate_datasets(parts), stats
        shares = ", ".join(f"{label} {w / sum(mixture.weights):.1%}" for label, w in zip(labels, mixture.weights))
        stats.notes.append(f"mixture{how}: {shares} of the rows drawn (streams: not counted up front)")
        return _interleave(parts, mixture), stats
    source, row = _draw(parts, mixture)
    index = np.cumsum([0] + [len(p) for p in parts[:-1]])[source] + row  # into the sources one after another
    mixed = datasets.concatenate_datasets(parts)
    if mixture.weights is not None:
        mixed = mixed.select(index)
    lengths = np.concatenate([pc.list_value_length(p.with_format("arrow")["input_ids"]) for p in parts])
    counts = np.bincount(source, minlength=len(parts))
    stats.rows_out, stats.tokens = len(mixed), int(lengths[index].sum())
    weights: list[float | None] = list(mixture.weights) if mixture.weights else [None] * len(parts)
    shares = ", ".join(
        f"{label} {n} rows = {n / len(mixed):.1%}" + (f" (weight {w:g})" if w is not None else "")
        for label, n, w in zip(labels, counts, weights)
    )
    stats.notes.append(f"mixture{how}: {shares}")
    return mixed, stats


def _draw(parts: list[datasets.Dataset], mixture: Mixture) -> tuple[np.ndarray, np.ndarray]:
    """(source, row) of every row of the mixture, in order: `interleave_datasets` over the row numbers."""
    keys = [
        datasets.Dataset.from_dict({"source": np.full(len(p), i), "row": np.arange(len(p))})
        for i, p in enumerate(parts)
    ]
    order = datasets.concatenate_datasets(keys) if mixture.weights is None else _interleave(keys, mixture)
    table = order.with_format("numpy")
    return np.asarray(table["source"]), np.asarray(table["row"])


def _interleave(parts: list[Any], mixture: Mixture) -> Any:
    """`parts` drawn by the mixture's weights, seed and stopping strategy (`datasets.interleave_datasets`)."""
    weights = mixture.weights or []
    probabilities = [w / sum(weights) for w in weights]
    return datasets.interleave_datasets(
        parts, probabilities, seed=mixture.seed, stopping_strategy=mixture.stopping_strategy
    )
