"""Where training text comes from: the bundled default corpus, local files, saved data, the Hub.

Every source ends as a plain `list[str]` of documents, so the shaping steps after it (packing
now; chat rendering later) never care where the text came from. `split_texts` carves a seeded
held-out set from that list.
"""

from __future__ import annotations

import glob
import os
import random
import re
from pathlib import Path

import datasets
from datasets.data_files import EmptyDatasetError
from datasets.exceptions import DatasetNotFoundError

from trainformers.errors import ConfigError, DataError, did_you_mean

__all__ = ["default_corpus", "load_texts", "split_paragraphs", "split_texts"]

# Documents of about this many characters give the default corpus several hundred documents.
DEFAULT_DOCUMENT_CHARS = 2000

# File types read through a `datasets` packaged builder; `.txt` is read by `split_paragraphs`.
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SUFFIXES = (".txt", *_BUILDERS)

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_paragraphs(text: str, max_chars: int = DEFAULT_DOCUMENT_CHARS) -> list[str]:
    """Split text on blank lines and group consecutive paragraphs into documents.

    Paragraphs are added to the current document until it would exceed `max_chars`; a single
    paragraph longer than that becomes a document on its own (it is never cut). Trailing
    whitespace and blank lines are removed, but a paragraph's leading indentation is kept
    because in code samples it is content.

    Args:
        text: The text to split.
        max_chars: Soft upper bound on a document's length in characters.

    Returns:
        The non-empty documents, in order; paragraphs inside one are joined by a blank line.
    """
    documents: list[str] = []
    current: list[str] = []
    size = 0
    for raw in _BLANK_LINE.split(text):
        paragraph = raw.rstrip().lstrip("\n")
        if not paragraph.strip():
            continue
        if current and size + 2 + len(paragraph) > max_chars:
            documents.append("\n\n".join(current))
            current, size = [], 0
        size += (2 if current else 0) + len(paragraph)
        current.append(paragraph)
    if current:
        documents.append("\n\n".join(current))
    return documents


def default_corpus() -> list[str]:
    """Return the corpus of the embedded default run: Python's own help topics.

    `pydoc_data.topics` ships with every CPython (about 0.5 MB of English prose and code).
    Topics are read in sorted-key order and each is split with `split_paragraphs`, which gives
    several hundred documents, the same ones on every call.
    """
    from pydoc_data.topics import topics

    return [doc for key in sorted(topics) for doc in split_paragraphs(topics[key])]


def load_texts(
    source: str | os.PathLike | None,
    *,
    text_field: str = "text",
    split: str = "train",
    subset: str | None = None,
    num_samples: int | None = None,
) -> list[str]:
    """Load the documents of a data source as a list of strings.

    What `source` can be:

    - `None`: `default_corpus()`.
    - a `.txt` file (or a glob of them): one document per group of blank-line-separated
      paragraphs, as `split_paragraphs` makes them.
    - a `.json`/`.jsonl`/`.csv`/`.parquet` file or a glob of them: read with the `datasets`
      builder of that type; `text_field` names the column. These have a single split.
    - a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`split`
      picks the split of a `DatasetDict`); any other directory is read by `load_dataset`.
    - anything else: a Hugging Face Hub dataset, `load_dataset(source, subset, split=split)`.

    Args:
        source: The data source, as above.
        text_field: The column that holds the text.
        split: The split to read, for saved `DatasetDict`s and Hub datasets.
        subset: The Hub dataset's configuration name, if it has several.
        num_samples: Keep only the first N records of the source (before empty texts are
            dropped); `None` keeps all.

    Returns:
        The non-empty texts, in source order.

    Raises:
        DataError: the source does not exist, lacks `text_field` or `split`, or has no text.
        ConfigError: `num_samples` is not a positive integer, or `subset` is given with a
            local source.
    """
    if num_samples is not None and (isinstance(num_samples, bool) or num_samples < 1):
        raise ConfigError(
            f"data.num_samples must be a positive integer, got {num_samples!r}; "
            "leave it unset to use every sample"
        )
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if source is None:
        texts = default_corpus()
    elif _looks_like_path(source):
        if subset is not None:
            raise ConfigError(
                f"data.subset {subset!r} only applies to Hub datasets, and data.source "
                f"{source!r} is a local path; remove data.subset"
            )
        texts = _load_local(source, text_field=text_field, split=split, num_samples=num_samples)
    else:
        texts = _load_hub(
            source, subset, text_field=text_field, split=split, num_samples=num_samples
        )
    texts = texts[:num_samples] if num_samples is not None else texts
    if not texts:
        raise DataError(
            f"data.source {source!r} has no non-empty texts; check the file or data.text_field"
        )
    return texts


def split_texts(
    texts: list[str], validation_split_percentage: float, seed: int
) -> tuple[list[str], list[str]]:
    """Shuffle documents with `seed` and hold out a percentage of them for evaluation.

    At least one document is held out when the percentage is positive and there are two or
    more documents, and at least one is always left for training. The split is by whole
    documents, so no document is in both parts.

    Args:
        texts: The documents.
        validation_split_percentage: Share held out, in percent, in `[0, 100)`.
        seed: Seed of the shuffle; the same seed gives the same split.

    Returns:
        `(train, validation)`, both in shuffled order; `(texts, [])` when the percentage is 0.

    Raises:
        ConfigError: the percentage is outside `[0, 100)`.
    """
    if not 0 <= validation_split_percentage < 100:
        raise ConfigError(
            f"data.validation_split_percentage must be in [0, 100), got "
            f"{validation_split_percentage!r}; use e.g. 5 to hold out 5% of the documents"
        )
    if validation_split_percentage == 0 or len(texts) < 2:
        return list(texts), []
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_validation = round(len(texts) * validation_split_percentage / 100)
    n_validation = min(max(n_validation, 1), len(texts) - 1)
    validation = [texts[i] for i in order[:n_validation]]
    train = [texts[i] for i in order[n_validation:]]
    return train, validation


def _looks_like_path(source: str) -> bool:
    # A Hub name is "name" or "owner/name"; it never has a file suffix, glob characters, or a
    # leading "/", "." or "~", and it is not a path that exists here.
    return (
        source.lower().endswith(_SUFFIXES)
        or source.startswith(("/", ".", "~"))
        or _is_glob(source)
        or Path(source).exists()
    )


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def _load_local(
    source: str, *, text_field: str, split: str, num_samples: int | None
) -> list[str]:
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataError(
                        f"data.split {split!r} is not in data.source {source!r}; available "
                        f"splits: {', '.join(dataset)}{did_you_mean(split, dataset)}"
                    )
                dataset = dataset[split]
        else:
            try:
                dataset = datasets.load_dataset(str(path), split=split)
            except EmptyDatasetError:
                raise DataError(
                    f"data.source {source!r} is a directory without data files; point it at "
                    "a Dataset.save_to_disk directory or at .txt/.json/.jsonl/.csv/.parquet files"
                ) from None
        return _column_texts(dataset, source, text_field, num_samples)

    files = sorted(glob.glob(str(path))) if _is_glob(source) else [str(path)]
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise DataError(f"data.source {source!r} not found; check the path or the glob")
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) > 1 or not suffixes <= set(_SUFFIXES):
        raise DataError(
            f"data.source {source!r} matches files of type {', '.join(sorted(suffixes))}; "
            f"use files of one type among {', '.join(_SUFFIXES)}"
        )
    (suffix,) = suffixes
    if suffix == ".txt":
        return [doc for f in files for doc in split_paragraphs(Path(f).read_text("utf-8"))]
    dataset = datasets.load_dataset(_BUILDERS[suffix], data_files=files, split="train")
    return _column_texts(dataset, source, text_field, num_samples)


def _load_hub(
    source: str, subset: str | None, *, text_field: str, split: str, num_samples: int | None
) -> list[str]:
    try:
        dataset = datasets.load_dataset(source, subset, split=split)
    except DatasetNotFoundError as error:
        reason = " ".join(str(error).split())
        raise DataError(
            f"data.source {source!r} is neither a local path nor a Hub dataset that can be "
            f"reached ({reason}); check the name, or give the path of a file"
        ) from error
    return _column_texts(dataset, source, text_field, num_samples)


def _column_texts(
    dataset: datasets.Dataset, source: str, text_field: str, num_samples: int | None
) -> list[str]:
    """Return the non-empty strings of `dataset[text_field]` among its first `num_samples` rows."""
    if text_field not in dataset.column_names:
        raise DataError(
            f"data.text_field {text_field!r} is not a column of data.source {source!r}; "
            f"available columns: {', '.join(dataset.column_names)}"
            f"{did_you_mean(text_field, dataset.column_names)}"
        )
    if num_samples is not None and num_samples < len(dataset):
        dataset = dataset.select(range(num_samples))
    texts = []
    for value in dataset[text_field]:
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(
                f"data.text_field {text_field!r} of data.source {source!r} holds "
                f"{type(value).__name__} values, not text; point data.text_field at a text column"
            )
        if value.strip():
            texts.append(value)
    return texts
